-- Volumes, inodes and directory entries of berth-fsd. Inode numbers are per volume;
-- inode 1 is each volume's root directory.
CREATE TABLE volumes (
    name       TEXT PRIMARY KEY NOT NULL,
    next_ino   INTEGER NOT NULL,
    created_ns INTEGER NOT NULL
);

CREATE TABLE inodes (
    volume   TEXT    NOT NULL REFERENCES volumes(name),
    ino      INTEGER NOT NULL,
    kind     INTEGER NOT NULL,
    mode     INTEGER NOT NULL,
    uid      INTEGER NOT NULL,
    gid      INTEGER NOT NULL,
    size     INTEGER NOT NULL,
    nlink    INTEGER NOT NULL,
    atime_ns INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    PRIMARY KEY (volume, ino)
) WITHOUT ROWID;

CREATE TABLE dentries (
    volume TEXT    NOT NULL,
    parent INTEGER NOT NULL,
    name   BLOB    NOT NULL,
    ino    INTEGER NOT NULL,
    PRIMARY KEY (volume, parent, name)
) WITHOUT ROWID;

CREATE INDEX dentries_by_ino ON dentries (volume, ino);
