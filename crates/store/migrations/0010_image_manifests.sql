-- What each image holds (os-release, packages, libc, kernel), read from the
-- image at import: JSON of vws_model::software::Manifest.
ALTER TABLE images ADD COLUMN manifest TEXT NOT NULL DEFAULT '{}';
