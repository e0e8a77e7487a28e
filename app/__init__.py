"""agentsched domain: models, settings and services. Imports none of api/, actors/, scheduler/."""
