"""HTTP service (FastAPI). Not built yet: issue 5 adds the routes. The API never imports torch."""
