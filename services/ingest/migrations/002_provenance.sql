-- Who sent each batch, and whether that principal is trusted: the manifest carries it, so a
-- retrain knows whose rows it learned from.
ALTER TABLE versions ADD COLUMN principal text, ADD COLUMN trusted boolean;
