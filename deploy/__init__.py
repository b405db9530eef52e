"""Deployment tooling outside Docker: ``deploy.local`` runs the production stack on loopback."""
