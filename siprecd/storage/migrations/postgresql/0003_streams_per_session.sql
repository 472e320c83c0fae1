-- A leg may have several streams in one role: further streams of a
-- 3-way call or conference, and the streams of every SIPREC session that
-- shares the guid.
ALTER TABLE streams DROP CONSTRAINT IF EXISTS streams_leg_id_role_key;
CREATE INDEX streams_leg ON streams (leg_id, role);
