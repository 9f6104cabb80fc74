// Package crashpoint kills the process at named points so that tests can check what the
// agent recovers from. It is active only in binaries built with the "crashpoints" build
// tag; otherwise Hit does nothing and costs nothing.
//
// Set EDGEWARD_CRASHPOINT=<name> to kill the process with SIGKILL the first time Hit(name)
// is reached; EDGEWARD_CRASHPOINT=<name>@<n> kills it at the n-th time (1-based).
package crashpoint

// Env is the environment variable naming the crash point.
const Env = "EDGEWARD_CRASHPOINT"

// Names lists every crash point the agent has, in the order an install reaches them.
func Names() []string {
	return []string{
		"after-install",     // downloading persisted, inactive slot not yet cleared
		"after-clear-slot",  // inactive slot cleared, download not started
		"mid-download",      // a download checkpoint (offset and hash state) is durable
		"after-download",    // slot file complete and renamed, "downloaded" not yet persisted
		"after-verify",      // verifying persisted and verify done, staged not yet persisted
		"after-stage",       // staged persisted
		"after-trial-start", // trial persisted, trial not yet started
		"after-commit",      // committed persisted, floor not yet raised
		"after-floor-raise", // floor raised, new slot not yet activated
		"after-rollback",    // rolled_back persisted, trial slot not yet cleared
	}
}

// DeltaNames lists the crash points of an install built from a delta (updater's slot
// fetcher), in the order it reaches them; an install of a full target reaches none.
func DeltaNames() []string {
	return []string{
		"after-delta-download", // the delta downloaded and verified, its apply (marked, running while it downloaded) not finished
		"mid-apply",            // the apply marked, its result partly written (at the first write, then every 64 MiB)
	}
}
