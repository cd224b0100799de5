"""Enrollment: broker clients made through Mosquitto's dynamic security plugin, one-time tokens."""
