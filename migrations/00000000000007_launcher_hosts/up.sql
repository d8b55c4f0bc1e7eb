-- The GPU hosts a gate with DESKGATE_LAUNCHER_DISCOVERY has met, by the
-- stable name their launcher reports (a Swarm node id, or a configured
-- name). The first time a name is seen it gets the next host number
-- (one more than the highest ever given); sessions, their leases and container labels use that number, so
-- a host keeps it whatever order the launchers are found in, across
-- restarts of the gate and of the launcher.
--
-- `drained`: an operator stopped new leases on every GPU of the host.
-- `retired_at`: an operator declared the host gone; its number is never
-- given to another host, and its sessions were ended.
CREATE TABLE launcher_hosts (
    number      INTEGER PRIMARY KEY CHECK (number BETWEEN 0 AND 65535),
    name        TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 64),
    first_seen  TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen   TIMESTAMPTZ NOT NULL DEFAULT now(),
    drained     BOOLEAN NOT NULL DEFAULT false,
    retired_at  TIMESTAMPTZ
);
