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
}
