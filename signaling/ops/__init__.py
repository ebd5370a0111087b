"""Running the server: the twistd plugin's options and services, listeners, TLS, signals."""
