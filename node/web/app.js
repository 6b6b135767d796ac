// The web client is loaded here.
