"""Stand-ins for everything the connector talks to, for tests, benchmarks and the no-account demo:
Genesys Cloud's Audio Connector (`call_simulator`) and the model vendors (`realtime_simulator`
for OpenAI Realtime). Not part of the connector's image.
"""
