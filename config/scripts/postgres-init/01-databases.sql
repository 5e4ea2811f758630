-- Databases of the services that share the mainframe's Postgres (run once, on an empty data directory).
CREATE DATABASE infisical;
CREATE DATABASE hermes;
