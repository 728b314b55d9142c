"""The Label Studio ML backend web service."""
