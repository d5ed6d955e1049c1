"""The web console: pages for each role that call the public HTTP API with the signed-in token"""
