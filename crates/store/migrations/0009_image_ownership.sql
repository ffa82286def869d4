-- Images are public (every client may use them) or private (their owner
-- and administrators only); hot images carry a workspace's memory, so the
-- ones already taken become private.
ALTER TABLE images ADD COLUMN visibility TEXT NOT NULL DEFAULT 'public';
UPDATE images SET visibility = 'private' WHERE kind = 'hot';
-- A name belongs to whoever first published under it: only they (or an
-- administrator) may move or remove its tags.
ALTER TABLE image_tags ADD COLUMN owner TEXT NOT NULL DEFAULT '';
UPDATE image_tags SET owner = (SELECT images.owner FROM images WHERE images.id = image_tags.image_id);
