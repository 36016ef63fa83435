namespace HighlanderPG.Testing;

/// <summary>
/// How <c>pg_ctl stop</c> shuts the server down (its <c>-m</c> option).
/// See https://www.postgresql.org/docs/current/app-pg-ctl.html and
/// https://www.postgresql.org/docs/current/server-shutdown.html.
/// </summary>
public enum ShutdownMode
{
    /// <summary>
    /// Waits for all clients to disconnect before shutting down (<c>-m smart</c>).
    /// Blocks for as long as any session stays connected.
    /// </summary>
    Smart,

    /// <summary>
    /// Terminates all sessions (rolling back their transactions and releasing their
    /// advisory locks), then shuts down cleanly (<c>-m fast</c>).
    /// </summary>
    Fast,

    /// <summary>
    /// Kills the server without a clean shutdown (<c>-m immediate</c>); the next start
    /// runs crash recovery. This is what a server crash looks like to clients.
    /// </summary>
    Immediate,
}
