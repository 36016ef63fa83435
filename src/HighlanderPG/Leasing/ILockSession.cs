namespace HighlanderPG.Leasing;

/// <summary>
/// What a runner needs of the node's lock session: ask for a key, give a lease back, see who holds a key, watch the
/// connection and the lease. <see cref="LockSession"/> implements it; tests drive runners through a fake.
/// </summary>
internal interface ILockSession
{
    /// <summary>
    /// Registers the runner of <paramref name="key"/>: told when the session connects, is lost or fails to connect, and
    /// when another node's hold on the key is first seen, changes, or ends. Dispose to stop.
    /// </summary>
    IDisposable Observe(long key, ISessionObserver observer);

    bool IsConnected { get; }

    /// <summary>The backend pid of the current session, 0 when there is none.</summary>
    int BackendPid { get; }

    /// <summary>The node's lease guard: runners watch their children with it while those may run.</summary>
    LeaseGuard Guard { get; }

    /// <summary>
    /// The earliest point (a <see cref="TimeProvider.GetTimestamp"/> value) at which the server may free this session's
    /// locks if it heard nothing more: the send time of the last acknowledged request plus the lease;
    /// <see cref="long.MinValue"/> when there is no session (the locks may already be gone).
    /// </summary>
    long ServerMayFreeTimestamp { get; }

    /// <summary>Registers that a runner wants <paramref name="key"/>; completes when this session holds it.</summary>
    Task<Lease> AcquireAsync(long key, string name, CancellationToken cancellationToken);

    /// <summary>Unlocks the lease's key and tells the other nodes, unless the lease is already gone with its session.</summary>
    Task ReleaseAsync(Lease lease);

    /// <summary>The holder of <paramref name="key"/> last seen by this node (for a key it wants but does not hold).</summary>
    LeaderInfo? GetHolder(long key);

    /// <summary>
    /// Keeps <paramref name="key"/> from being tried for <paramref name="duration"/> (this node stepped down from it),
    /// while it stays wanted: its runner follows, and sees who leads meanwhile.
    /// </summary>
    void HoldOff(long key, TimeSpan duration);
}
