"""The web pages (reviewer, audit, ops): static HTML, ES modules and CSS served by the same
server, speaking the public GraphQL API like any other client."""
