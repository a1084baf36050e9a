-- Store::next_id counters that 0001 missed: pause/resume sequence numbers
-- (`control`) and recurring-job schedule ids (`repeat`). Without them the
-- first `job pause` or `job create --repeat` on PostgreSQL failed its
-- transaction. A new next_id name needs its sequence here first.
CREATE SEQUENCE IF NOT EXISTS relaytree_id_control;
CREATE SEQUENCE IF NOT EXISTS relaytree_id_repeat;
