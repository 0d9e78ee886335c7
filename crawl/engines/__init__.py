"""Search engines, one module each: web image search through a browser (Google,
Bing, DuckDuckGo) and the APIs and local collections that need none."""
