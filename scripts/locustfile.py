"""Locust load for objdetect (objdetect_tools.locustfile): locust -f scripts/locustfile.py --host URL"""

from objdetect_tools.locustfile import Client  # noqa: F401 - locust finds the user class here
