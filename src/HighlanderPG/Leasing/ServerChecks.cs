namespace HighlanderPG.Leasing;

/// <summary>What makes a server unsafe to hold singleton locks on.</summary>
internal static class ServerChecks
{
    /// <summary>PostgreSQL 14 added <c>idle_session_timeout</c>, the server-side lease.</summary>
    public const int MinimumVersionNum = 140000;

    /// <summary>Returns why the server must not be used, or <see langword="null"/> when it may.</summary>
    public static string? Check(int serverVersionNum, string serverVersion, bool inRecovery, int serverPid, int connectionPid, HighlanderOptions options)
    {
        if (inRecovery)
        {
            return "the server is a standby (pg_is_in_recovery() is true): advisory locks are not replicated, and a promoted standby starts with none. Connect to the primary.";
        }

        if (serverVersionNum < MinimumVersionNum && !options.AllowWithoutServerLease)
        {
            return $"PostgreSQL {serverVersion} has no idle_session_timeout (added in 14), so the server cannot enforce the lease: a cut-off leader could keep its locks for hours. Upgrade to PostgreSQL 14 or later, or set {nameof(HighlanderOptions.AllowWithoutServerLease)} to accept the documented weaker mode.";
        }

        if (serverPid != connectionPid && !options.AllowSessionModePooler)
        {
            return $"the connection goes through a pooler (the server's backend pid {serverPid} is not the connection's {connectionPid}). A transaction-mode pooler silently breaks session advisory locks. Connect to PostgreSQL directly, or, if the pooler runs in session mode, set {nameof(HighlanderOptions.AllowSessionModePooler)}.";
        }

        return null;
    }

    /// <summary>
    /// Whether the server's shared lock table can hold this node's singletons: PostgreSQL sizes it for
    /// <c>max_locks_per_transaction</c> × (<c>max_connections</c> + <c>max_prepared_transactions</c>) locks in all, shared
    /// by every session (https://www.postgresql.org/docs/current/runtime-config-locks.html), and one node may come to hold
    /// every singleton. Returns why not, or <see langword="null"/>.
    /// </summary>
    public static string? CheckLockCapacity(int singletons, int maxLocksPerTransaction, int maxConnections, int maxPreparedTransactions)
    {
        var capacity = (long)maxLocksPerTransaction * (maxConnections + maxPreparedTransactions);
        if (singletons <= capacity)
        {
            return null;
        }

        return $"this node runs {singletons} singletons, and one node may come to hold all of them, but the server's lock table holds {capacity} locks in all, shared by every session (max_locks_per_transaction {maxLocksPerTransaction} x (max_connections {maxConnections} + max_prepared_transactions {maxPreparedTransactions})): the server would refuse with 'out of shared memory'. Raise max_locks_per_transaction on the server (it takes a restart), or run fewer singletons.";
    }

    /// <summary>What to say about an error of a lock statement that means the server's lock table is full (<c>53200</c>).</summary>
    public static string? DescribeOutOfLocks(string sqlState) => sqlState == "53200"
        ? " (the server's lock table is full: it holds max_locks_per_transaction x (max_connections + max_prepared_transactions) locks in all; raise max_locks_per_transaction, which takes a server restart)"
        : null;
}
