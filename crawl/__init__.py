"""Crawl stage: entities to search queries, search results and archived downloads."""
