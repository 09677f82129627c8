-- The schema of sensorhub's first release (commit 9284b2f, before migrations), as `sqlite3 .schema` printed it.
-- tests/test_migrations.py builds a database of that release from it and upgrades it.
CREATE TABLE device (
	id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, 
	name VARCHAR(29) NOT NULL, 
	session_name VARCHAR(29) NOT NULL, 
	mac VARCHAR(17) NOT NULL, 
	online BOOLEAN NOT NULL, 
	session_id VARCHAR(17) NOT NULL, 
	joined_at VARCHAR(26) NOT NULL, 
	last_seen VARCHAR(26) NOT NULL, 
	CONSTRAINT name_format CHECK (length(name) BETWEEN 1 AND 29 AND instr(name, ';') = 0 AND name NOT GLOB '*[^ -~]*' AND name = trim(name)), 
	CONSTRAINT session_name_format CHECK (length(session_name) BETWEEN 1 AND 29 AND instr(session_name, ';') = 0 AND session_name NOT GLOB '*[^ -~]*' AND session_name = trim(session_name)), 
	CONSTRAINT mac_format CHECK (mac GLOB '[0-9A-F][0-9A-F]:[0-9A-F][0-9A-F]:[0-9A-F][0-9A-F]:[0-9A-F][0-9A-F]:[0-9A-F][0-9A-F]:[0-9A-F][0-9A-F]'), 
	CONSTRAINT session_id_format CHECK (length(session_id) BETWEEN 1 AND 17 AND session_id NOT GLOB '*[^!-~]*' AND instr(session_id, ';') = 0), 
	CONSTRAINT online_boolean CHECK (online IN (0, 1)), 
	CONSTRAINT joined_at_format CHECK (joined_at GLOB '[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9] [0-2][0-9]:[0-5][0-9]:[0-5][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]'), 
	CONSTRAINT last_seen_format CHECK (last_seen GLOB '[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9] [0-2][0-9]:[0-5][0-9]:[0-5][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]'), 
	CONSTRAINT seen_after_joined CHECK (joined_at <= last_seen), 
	UNIQUE (name), 
	UNIQUE (session_name), 
	UNIQUE (mac)
);
CREATE INDEX ix_device_online ON device (online);
CREATE INDEX ix_device_last_seen ON device (last_seen, id);
CREATE TABLE led_reading (
	id INTEGER NOT NULL, 
	device_id INTEGER NOT NULL, 
	at VARCHAR(26) NOT NULL, 
	value INTEGER NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT led_value CHECK (typeof(value) = 'integer' AND value IN (0, 1)), 
	CONSTRAINT at_format CHECK (at GLOB '[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9] [0-2][0-9]:[0-5][0-9]:[0-5][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]'), 
	FOREIGN KEY(device_id) REFERENCES device (id) ON DELETE CASCADE
);
CREATE INDEX ix_led_reading_device_at ON led_reading (device_id, at);
CREATE TABLE button_reading (
	id INTEGER NOT NULL, 
	device_id INTEGER NOT NULL, 
	at VARCHAR(26) NOT NULL, 
	value INTEGER NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT button_value CHECK (typeof(value) = 'integer' AND value IN (0, 1)), 
	CONSTRAINT at_format CHECK (at GLOB '[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9] [0-2][0-9]:[0-5][0-9]:[0-5][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]'), 
	FOREIGN KEY(device_id) REFERENCES device (id) ON DELETE CASCADE
);
CREATE INDEX ix_button_reading_device_at ON button_reading (device_id, at);
CREATE TABLE light_reading (
	id INTEGER NOT NULL, 
	device_id INTEGER NOT NULL, 
	at VARCHAR(26) NOT NULL, 
	value INTEGER NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT light_value CHECK (typeof(value) = 'integer' AND value BETWEEN 0 AND 100), 
	CONSTRAINT at_format CHECK (at GLOB '[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9] [0-2][0-9]:[0-5][0-9]:[0-5][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]'), 
	FOREIGN KEY(device_id) REFERENCES device (id) ON DELETE CASCADE
);
CREATE INDEX ix_light_reading_device_at ON light_reading (device_id, at);
CREATE TRIGGER led_reading_insert_check BEFORE INSERT ON led_reading
        BEGIN
            SELECT RAISE(ABORT, 'led_reading: unknown device')
            WHERE NOT EXISTS (SELECT 1 FROM device WHERE id = NEW.device_id);
            SELECT RAISE(ABORT, 'led_reading: a reading must be after the device joined')
            WHERE NEW.at <= (SELECT joined_at FROM device WHERE id = NEW.device_id);
            SELECT RAISE(ABORT, 'led_reading: a reading cannot be in the future')
            WHERE NEW.at > strftime('%Y-%m-%d %H:%M:%f', 'now', '+1 seconds');
        END;
CREATE TRIGGER led_reading_at_immutable BEFORE UPDATE OF at ON led_reading
        WHEN NEW.at IS NOT OLD.at
        BEGIN
            SELECT RAISE(ABORT, 'led_reading: a reading''s timestamp cannot change');
        END;
CREATE TRIGGER led_reading_device_immutable BEFORE UPDATE OF device_id ON led_reading
        WHEN NEW.device_id IS NOT OLD.device_id
        BEGIN
            SELECT RAISE(ABORT, 'led_reading: a reading cannot move to another device');
        END;
CREATE TRIGGER button_reading_insert_check BEFORE INSERT ON button_reading
        BEGIN
            SELECT RAISE(ABORT, 'button_reading: unknown device')
            WHERE NOT EXISTS (SELECT 1 FROM device WHERE id = NEW.device_id);
            SELECT RAISE(ABORT, 'button_reading: a reading must be after the device joined')
            WHERE NEW.at <= (SELECT joined_at FROM device WHERE id = NEW.device_id);
            SELECT RAISE(ABORT, 'button_reading: a reading cannot be in the future')
            WHERE NEW.at > strftime('%Y-%m-%d %H:%M:%f', 'now', '+1 seconds');
        END;
CREATE TRIGGER button_reading_at_immutable BEFORE UPDATE OF at ON button_reading
        WHEN NEW.at IS NOT OLD.at
        BEGIN
            SELECT RAISE(ABORT, 'button_reading: a reading''s timestamp cannot change');
        END;
CREATE TRIGGER button_reading_device_immutable BEFORE UPDATE OF device_id ON button_reading
        WHEN NEW.device_id IS NOT OLD.device_id
        BEGIN
            SELECT RAISE(ABORT, 'button_reading: a reading cannot move to another device');
        END;
CREATE TRIGGER light_reading_insert_check BEFORE INSERT ON light_reading
        BEGIN
            SELECT RAISE(ABORT, 'light_reading: unknown device')
            WHERE NOT EXISTS (SELECT 1 FROM device WHERE id = NEW.device_id);
            SELECT RAISE(ABORT, 'light_reading: a reading must be after the device joined')
            WHERE NEW.at <= (SELECT joined_at FROM device WHERE id = NEW.device_id);
            SELECT RAISE(ABORT, 'light_reading: a reading cannot be in the future')
            WHERE NEW.at > strftime('%Y-%m-%d %H:%M:%f', 'now', '+1 seconds');
        END;
CREATE TRIGGER light_reading_at_immutable BEFORE UPDATE OF at ON light_reading
        WHEN NEW.at IS NOT OLD.at
        BEGIN
            SELECT RAISE(ABORT, 'light_reading: a reading''s timestamp cannot change');
        END;
CREATE TRIGGER light_reading_device_immutable BEFORE UPDATE OF device_id ON light_reading
        WHEN NEW.device_id IS NOT OLD.device_id
        BEGIN
            SELECT RAISE(ABORT, 'light_reading: a reading cannot move to another device');
        END;
CREATE TRIGGER device_insert_check BEFORE INSERT ON device
    BEGIN
        SELECT RAISE(ABORT, 'device: joined_at cannot be in the future')
        WHERE NEW.joined_at > strftime('%Y-%m-%d %H:%M:%f', 'now', '+1 seconds');
        SELECT RAISE(ABORT, 'device: a new device uses its name in its session')
        WHERE NEW.session_name IS NOT NEW.name;
        SELECT RAISE(ABORT, 'device: name already used by another device''s session')
        WHERE EXISTS (SELECT 1 FROM device WHERE session_name = NEW.name);
    END;
CREATE TRIGGER device_joined_at_immutable BEFORE UPDATE OF joined_at ON device
    WHEN NEW.joined_at IS NOT OLD.joined_at
    BEGIN
        SELECT RAISE(ABORT, 'device: joined_at cannot change');
    END;
CREATE TRIGGER device_last_seen_check BEFORE UPDATE OF last_seen ON device
    WHEN NEW.last_seen > strftime('%Y-%m-%d %H:%M:%f', 'now', '+1 seconds')
    BEGIN
        SELECT RAISE(ABORT, 'device: last_seen cannot be in the future');
    END;
CREATE TRIGGER device_name_check BEFORE UPDATE OF name ON device
    WHEN NEW.name IS NOT OLD.name
    BEGIN
        SELECT RAISE(ABORT, 'device: name already used by another device''s session')
        WHERE EXISTS (SELECT 1 FROM device WHERE session_name = NEW.name AND id != NEW.id);
    END;
CREATE TRIGGER device_session_name_check BEFORE UPDATE OF session_name ON device
    WHEN NEW.session_name IS NOT OLD.session_name
    BEGIN
        SELECT RAISE(ABORT, 'device: a session can only take the device''s current name')
        WHERE NEW.session_name IS NOT NEW.name;
    END;
PRAGMA user_version = 1;
