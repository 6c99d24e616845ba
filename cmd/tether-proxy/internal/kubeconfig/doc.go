// Package kubeconfig merges the entries tether-proxy writes (a context, and
// the cluster and user it names) into a user's kubeconfig files, and takes
// them out again, without losing or leaking anything of the user's.
//
// The rules, each one a bug a reviewer once reproduced:
//
//   - Every entry tether writes carries an extension, ExtensionName, whose
//     Mark records who wrote it, for which Mode (a running tether-proxy, or
//     the relay's cluster endpoint with no local process) and for which run.
//     An entry without it is the user's.
//   - A context that is not tether's own (the user's, or one written for the
//     other mode, or one of a tether-proxy still running) is replaced only
//     with Config.Overwrite; the refusal names the context, its cluster and
//     user entries and the other contexts that use them. Written.Remove (a
//     proxy's exit) puts back what the proxy replaced.
//   - A cluster or user entry is never repointed unless it is tether's own,
//     of the same mode, and no other context uses it (otherwise that context
//     would send its credential to the relay, or the caller's token to that
//     context's server): the context then gets entries of its own, named
//     NAME-tether, NAME-tether-2, ….
//   - Written.Remove deletes only the entries of its own run that no other
//     context uses; what was changed since is left as it is.
//   - A file that is not a kubeconfig, or one holding fields clientcmd does
//     not know (which writing it again would drop), is refused, untouched.
//
// Reading and writing go through client-go's clientcmd: the files are
// those of kubectl (clientcmd.PathOptions: --kubeconfig, else every file of
// $KUBECONFIG, else ~/.kube/config), and clientcmd.ModifyConfig decides
// where each change goes (a new entry to the first file of $KUBECONFIG that
// exists, else the last; an existing entry in the file that holds it). Two
// things of ModifyConfig are wrapped:
//
//   - its lock (FILE.lock, created exclusively: the one kubectl takes) fails
//     at once when another writer holds it; this package takes the same lock
//     files itself, waiting up to Config.LockTimeout for them;
//   - it rewrites files in place (truncate, then write), so a full disk
//     leaves a truncated kubeconfig, and it writes one file per changed
//     entry. This package runs ModifyConfig on private copies of the locked
//     files and then replaces each changed file by a temporary file in its
//     directory, synced and renamed over it: a failure anywhere leaves every
//     file as it was. A file keeps its mode (and, where it can, its owner); a
//     file tether creates is 0600, in a 0700 directory when it creates that.
package kubeconfig
