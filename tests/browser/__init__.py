"""Browser tests: the running app driven by Debian chromium through Playwright."""
