DROP TABLE session_leases;
