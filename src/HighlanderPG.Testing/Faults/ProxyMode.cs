namespace HighlanderPG.Testing;

/// <summary>What a <see cref="FaultProxy"/> does with the traffic passing through it.</summary>
public enum ProxyMode
{
    /// <summary>
    /// Bytes and closes are forwarded both ways for every newly accepted connection.
    /// Connections that were blackholed are reset when the proxy returns to this mode,
    /// because the bytes discarded while blackholed left their streams corrupt.
    /// </summary>
    Pass,

    /// <summary>
    /// For existing and new connections: nothing is forwarded. Both sides are still read
    /// (and the bytes discarded) and both sockets stay open; a close on one side is not
    /// forwarded to the other. New connections are accepted but never reach the server,
    /// so a client's connection attempt hangs at the protocol level. This is what a
    /// network partition looks like to the application, except that the proxy's own
    /// kernel still answers TCP keepalive probes.
    /// </summary>
    Blackhole,

    /// <summary>
    /// A one-shot action rather than a lasting mode: every current connection is closed
    /// abruptly (TCP RST) on both sides, then the proxy goes back to <see cref="Pass"/>
    /// for new connections.
    /// </summary>
    Reset,
}
