"""Provide loopback HTTP test doubles for the AI and WhatsApp providers."""
