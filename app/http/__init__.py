"""HTTP endpoints beside /graphql."""
