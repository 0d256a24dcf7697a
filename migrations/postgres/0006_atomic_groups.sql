-- Atomic groups (issue 14): a refused group's record names the leg that was refused (every other
-- leg was refused with it), so a retry answers exactly as the first time. NULL for every other
-- command.
ALTER TABLE commands ADD COLUMN refused_leg INTEGER;
