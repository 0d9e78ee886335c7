"""Knowledge-graph stage: read Wikidata dumps, keep them in an embedded store,
talk to SPARQL endpoints such as QLever, and harvest entity records."""
