DROP TABLE launcher_hosts;
