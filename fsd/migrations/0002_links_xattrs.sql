-- Symlink targets and extended attributes. Both go with their inode (ON DELETE CASCADE).
CREATE TABLE symlinks (
    volume TEXT    NOT NULL,
    ino    INTEGER NOT NULL,
    target BLOB    NOT NULL,
    PRIMARY KEY (volume, ino),
    FOREIGN KEY (volume, ino) REFERENCES inodes (volume, ino) ON DELETE CASCADE
) WITHOUT ROWID;

CREATE TABLE xattrs (
    volume TEXT    NOT NULL,
    ino    INTEGER NOT NULL,
    name   BLOB    NOT NULL,
    value  BLOB    NOT NULL,
    PRIMARY KEY (volume, ino, name),
    FOREIGN KEY (volume, ino) REFERENCES inodes (volume, ino) ON DELETE CASCADE
) WITHOUT ROWID;
