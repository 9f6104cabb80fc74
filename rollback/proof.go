package rollback

import (
	"context"
	"os"
)

// Proof is a Fetcher's statement that it hashed every byte of the file it just wrote, in
// this process, as it wrote it: the file File identifies (its fstat after the last
// change, the rename included) holds Length bytes whose sha256 is SHA256. The zero Proof
// proves nothing.
//
// The Manager takes a Proof in place of reading the slot again only within the call
// that ran the download, only for the target it was fetching, and only while the slot's
// file is still File (same device and inode, size, modification and change times). A
// slot whose download completed in an earlier process (a crash between download and
// verification, or a download resumed from a checkpoint on disk) has no Proof and is
// read and hashed again.
type Proof struct {
	Length int64
	SHA256 string // lower-case hex
	File   os.FileInfo
}

// ProvingFetcher is a Fetcher that hashes what it writes while writing it and says so.
type ProvingFetcher interface {
	Fetcher
	// FetchProven is Fetch that also returns, on success, a Proof for path, or the zero
	// Proof when it did not hash every byte itself in this call (a download resumed
	// from a checkpoint written by an earlier process).
	FetchProven(ctx context.Context, t Target, path string) (Proof, error)
}

// fileID is what identifies a file's content without reading it: a file changed,
// replaced or renamed onto gets another ID. ok is false where the platform does not
// say (then nothing is taken on trust).
type fileID struct {
	dev, ino     uint64
	size         int64
	mtime, ctime int64 // ns
}

// identify returns fi's ID.
func identify(fi os.FileInfo) (fileID, bool) {
	if fi == nil {
		return fileID{}, false
	}
	id, ok := statID(fi)
	id.size = fi.Size()
	return id, ok
}

// proves reports whether p proves that path holds t: p is for t, and path is still
// the file p names.
func (p Proof) proves(path string, t Target) bool {
	if p.File == nil || p.Length != t.Length || p.SHA256 != t.SHA256 {
		return false
	}
	want, ok := identify(p.File)
	if !ok {
		return false
	}
	fi, err := os.Stat(path)
	if err != nil {
		return false
	}
	got, ok := identify(fi)
	return ok && got == want && got.size == t.Length
}

// stamp is the Manager's memory that it verified the staged slot itself: the trial of
// that slot starts without reading it again while the file is still id.
type stamp struct {
	target Target
	slot   Slot
	id     fileID
}

// verifySlot checks that path holds t: at once if proof proves it, else by reading and
// hashing the file. It returns the file's ID when the file did not change while it was
// read (ok false: the caller must not remember it as verified).
func verifySlot(path string, t Target, proof Proof) (id fileID, ok bool, proven bool, err error) {
	if proof.proves(path, t) {
		id, _ = identify(proof.File)
		return id, true, true, nil
	}
	before, err := os.Stat(path)
	if err != nil {
		return fileID{}, false, false, verifyFile(path, t)
	}
	if err := verifyFile(path, t); err != nil {
		return fileID{}, false, false, err
	}
	after, err := os.Stat(path)
	if err != nil {
		return fileID{}, false, false, nil
	}
	b, ok1 := identify(before)
	a, ok2 := identify(after)
	return a, ok1 && ok2 && a == b, false, nil
}
