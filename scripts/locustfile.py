"""Locust load for objdetect (objdetect_tools.locustfile): locust -f scripts/locustfile.py --host URL"""

if __name__ == "__main__":
    # Run as a command (`--help` included), it only says how to use it: locust loads this file by
    # path, and importing the load here would patch this process with gevent and build its images.
    import argparse

    parser = argparse.ArgumentParser(usage="locust -f scripts/locustfile.py --host URL [locust options]",
                                     description=__doc__ + "; make loadtest runs it headless with a report.")
    parser.parse_args()
    parser.error("a file for locust to load, not a command of its own")
else:
    from objdetect_tools.locustfile import Client  # noqa: F401 - locust finds the user class here
