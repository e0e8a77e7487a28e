"""Completion webhooks, signed to the Standard Webhooks specification, delivered at least once.

addresses: what a webhook may point at (validated when set and again when sending).
signing:   users' `whsec_` secrets, their rotation, and the `webhook-signature` header.
payload:   the JSON body of an event.
outbox:    delivery rows written with a run's end, and their messages sent after commit.
attempts:  one attempt to deliver: claim, sign, POST to the checked address, record.
sender:    the HTTP POST itself, to a pinned IP, no redirects, with a timeout.
"""
