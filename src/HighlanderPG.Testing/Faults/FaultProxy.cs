using System.Net;
using System.Net.Sockets;
using Npgsql;

namespace HighlanderPG.Testing;

/// <summary>
/// A TCP proxy on <c>127.0.0.1</c> between clients and a server, that can pass traffic,
/// blackhole it or reset every connection: an application-level cut-off of a node.
/// </summary>
/// <remarks>
/// It tests an application's own deadlines and the server's <c>idle_session_timeout</c>. It
/// cannot test TCP keepalive or <c>tcp_user_timeout</c>: the proxy's kernel still answers
/// those probes on both sides. For a real partition, use a network namespace and iptables.
/// All members are thread-safe.
/// </remarks>
public sealed class FaultProxy : IAsyncDisposable
{
    private const int BufferSize = 16 * 1024;

    private readonly object _gate = new();
    private readonly HashSet<Link> _links = [];
    private readonly HashSet<Task> _linkTasks = [];
    private readonly TcpListener _listener;
    private readonly CancellationTokenSource _shutdown = new();
    private readonly Task _acceptLoop;
    private ProxyMode _mode = ProxyMode.Pass;
    private bool _disposed;

    private FaultProxy(string targetHost, int targetPort)
    {
        TargetHost = targetHost;
        TargetPort = targetPort;
        _listener = new TcpListener(IPAddress.Loopback, 0);
        _listener.Start(backlog: 512);
        Port = ((IPEndPoint)_listener.LocalEndpoint).Port;
        _acceptLoop = Task.Run(AcceptLoopAsync);
    }

    /// <summary>The address clients connect to: always <c>127.0.0.1</c>.</summary>
    public string Host => "127.0.0.1";

    /// <summary>The TCP port the proxy listens on (chosen free at start).</summary>
    public int Port { get; }

    /// <summary>The host the proxy forwards to.</summary>
    public string TargetHost { get; }

    /// <summary>The port the proxy forwards to.</summary>
    public int TargetPort { get; }

    /// <summary>
    /// The current mode: <see cref="ProxyMode.Pass"/> or <see cref="ProxyMode.Blackhole"/>
    /// (after <see cref="ProxyMode.Reset"/> the proxy is back in <see cref="ProxyMode.Pass"/>).
    /// </summary>
    public ProxyMode Mode
    {
        get
        {
            lock (_gate)
            {
                return _mode;
            }
        }
    }

    /// <summary>The number of client connections currently open through the proxy, blackholed ones included.</summary>
    public int ActiveConnections
    {
        get
        {
            lock (_gate)
            {
                return _links.Count;
            }
        }
    }

    /// <summary>Starts a proxy listening on <c>127.0.0.1</c> at a free port, in <see cref="ProxyMode.Pass"/>.</summary>
    /// <param name="targetHost">The server's host name or address.</param>
    /// <param name="targetPort">The server's port.</param>
    /// <returns>The running proxy.</returns>
    public static FaultProxy Start(string targetHost, int targetPort)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(targetHost);
        ArgumentOutOfRangeException.ThrowIfLessThan(targetPort, IPEndPoint.MinPort + 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(targetPort, IPEndPoint.MaxPort);
        return new FaultProxy(targetHost, targetPort);
    }

    /// <summary>
    /// Returns <paramref name="baseConnectionString"/> with its host and port replaced by the
    /// proxy's, so that a client connects through the proxy.
    /// </summary>
    /// <param name="baseConnectionString">An Npgsql connection string for the target server.</param>
    /// <returns>The connection string through the proxy.</returns>
    public string ConnectionString(string baseConnectionString)
    {
        ArgumentNullException.ThrowIfNull(baseConnectionString);
        return new NpgsqlConnectionStringBuilder(baseConnectionString) { Host = Host, Port = Port }.ConnectionString;
    }

    /// <summary>
    /// Changes what the proxy does; see <see cref="ProxyMode"/>. Takes effect at once for
    /// existing connections: <see cref="ProxyMode.Blackhole"/> stops forwarding on all of them;
    /// <see cref="ProxyMode.Reset"/> resets all of them and returns to <see cref="ProxyMode.Pass"/>;
    /// <see cref="ProxyMode.Pass"/> after <see cref="ProxyMode.Blackhole"/> resets the
    /// blackholed connections, whose streams lost bytes, and passes new ones.
    /// </summary>
    /// <param name="mode">The new mode.</param>
    public void SetMode(ProxyMode mode)
    {
        List<Link> toReset;
        List<Link> toCancel = [];
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            switch (mode)
            {
                case ProxyMode.Blackhole:
                    _mode = ProxyMode.Blackhole;
                    foreach (var link in _links)
                    {
                        link.MarkBlackholed();
                    }

                    toReset = [];
                    break;

                case ProxyMode.Pass:
                    if (_mode == ProxyMode.Pass)
                    {
                        return;
                    }

                    _mode = ProxyMode.Pass;
                    toReset = _links.Where(l => l.IsBlackholed).ToList();
                    break;

                case ProxyMode.Reset:
                    _mode = ProxyMode.Pass;
                    toReset = [.. _links];
                    break;

                default:
                    throw new ArgumentOutOfRangeException(nameof(mode), mode, "Unknown proxy mode.");
            }

            foreach (var link in toReset)
            {
                _links.Remove(link);
            }

            if (mode == ProxyMode.Blackhole)
            {
                toCancel = [.. _links];
            }
        }

        // Outside the lock: cancelling runs the cancelled sends' continuations.
        foreach (var link in toCancel)
        {
            link.CancelForwarding();
        }

        foreach (var link in toReset)
        {
            link.Abort();
        }
    }

    /// <summary>Stops listening and resets every connection.</summary>
    /// <returns>A task that completes when all the proxy's work has ended.</returns>
    public async ValueTask DisposeAsync()
    {
        List<Link> links;
        lock (_gate)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            links = [.. _links];
            _links.Clear();
        }

        await _shutdown.CancelAsync().ConfigureAwait(false);
        _listener.Stop();
        foreach (var link in links)
        {
            link.Abort();
        }

        await _acceptLoop.ConfigureAwait(false);
        Task[] tasks;
        lock (_gate)
        {
            tasks = [.. _linkTasks];
        }

        await Task.WhenAll(tasks).ConfigureAwait(false);
        _shutdown.Dispose();
    }

    private async Task AcceptLoopAsync()
    {
        var token = _shutdown.Token;
        while (!token.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await _listener.AcceptSocketAsync(token).ConfigureAwait(false);
            }
            catch (Exception ex) when (IsSocketFailure(ex))
            {
                if (token.IsCancellationRequested)
                {
                    return;
                }

                continue; // A client that gave up before being accepted.
            }

            client.NoDelay = true;
            var link = new Link(client);
            lock (_gate)
            {
                if (_disposed)
                {
                    link.Abort();
                    return;
                }

                if (_mode == ProxyMode.Blackhole)
                {
                    link.MarkBlackholed(); // No send can be in progress yet: nothing to cancel.
                }

                _links.Add(link);
                var task = RunLinkAsync(link);
                _linkTasks.Add(task);
                _ = task.ContinueWith(
                    t =>
                    {
                        lock (_gate)
                        {
                            _linkTasks.Remove(t);
                        }
                    },
                    CancellationToken.None,
                    TaskContinuationOptions.ExecuteSynchronously,
                    TaskScheduler.Default);
            }
        }
    }

    private async Task RunLinkAsync(Link link)
    {
        await Task.Yield(); // Never run a link's work on the accept loop.
        if (!link.IsBlackholed)
        {
            var server = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            try
            {
                await server.ConnectAsync(TargetHost, TargetPort, _shutdown.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (IsSocketFailure(ex))
            {
                server.Dispose();
                if (!link.IsBlackholed || link.IsClosed)
                {
                    Remove(link);
                    link.Abort(); // Like a refused connection: the client sees a reset.
                    return;
                }

                // Blackholed meanwhile: the client must see nothing, so keep it and discard.
                await PumpAsync(link, link.Client, to: null).ConfigureAwait(false);
                return;
            }

            if (!link.AttachServer(server))
            {
                return; // Reset or disposed while connecting; AttachServer closed the socket.
            }
        }

        var upstream = link.Server;
        await Task.WhenAll(
            PumpAsync(link, link.Client, upstream),
            upstream is null ? Task.CompletedTask : PumpAsync(link, upstream, link.Client)).ConfigureAwait(false);
    }

    /// <summary>Moves bytes from <paramref name="from"/> to <paramref name="to"/> until one side ends.</summary>
    private async Task PumpAsync(Link link, Socket from, Socket? to)
    {
        var buffer = new byte[BufferSize];
        while (true)
        {
            int received;
            try
            {
                received = await from.ReceiveAsync(buffer, SocketFlags.None, _shutdown.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (IsSocketFailure(ex))
            {
                if (!link.IsClosed && !link.IsBlackholed)
                {
                    ResetLink(link); // Forward the failure as a reset.
                }

                return; // Blackholed: keep the other side open and don't tell it.
            }

            if (received == 0)
            {
                if (link.IsBlackholed || to is null)
                {
                    return; // Don't forward the close.
                }

                try
                {
                    to.Shutdown(SocketShutdown.Send);
                }
                catch (Exception ex) when (IsSocketFailure(ex))
                {
                    ResetLink(link);
                    return;
                }

                if (link.HalfClose())
                {
                    Remove(link);
                    link.Close(); // Both directions ended cleanly.
                }

                return;
            }

            if (link.IsBlackholed || to is null)
            {
                continue; // Discard.
            }

            try
            {
                var sent = 0;
                while (sent < received)
                {
                    sent += await to.SendAsync(buffer.AsMemory(sent, received - sent), SocketFlags.None, link.ForwardingToken).ConfigureAwait(false);
                }
            }
            catch (Exception ex) when (IsSocketFailure(ex))
            {
                if (link.IsBlackholed && !link.IsClosed)
                {
                    continue; // The send was cancelled by the blackhole: keep reading and discarding.
                }

                if (!link.IsClosed)
                {
                    ResetLink(link);
                }

                return;
            }
        }
    }

    private void ResetLink(Link link)
    {
        Remove(link);
        link.Abort();
    }

    private void Remove(Link link)
    {
        lock (_gate)
        {
            _links.Remove(link);
        }
    }

    private static bool IsSocketFailure(Exception ex) =>
        ex is SocketException or ObjectDisposedException or OperationCanceledException or IOException or InvalidOperationException;

    /// <summary>One client connection and, unless it was accepted while blackholed, its server connection.</summary>
    private sealed class Link(Socket client)
    {
        private readonly object _gate = new();
        // Never disposed: it owns no timer, and its token must stay usable by late sends.
        private readonly CancellationTokenSource _forwarding = new();
        private Socket? _server;
        private int _halfClosed;
        private volatile bool _blackholed;
        private volatile bool _closed;

        public Socket Client { get; } = client;

        public Socket? Server
        {
            get
            {
                lock (_gate)
                {
                    return _server;
                }
            }
        }

        public bool IsBlackholed => _blackholed;

        public bool IsClosed => _closed;

        /// <summary>Cancels sends in progress when the link is blackholed.</summary>
        public CancellationToken ForwardingToken => _forwarding.Token;

        /// <summary>Attaches the connected server socket; false (and the socket closed) if the link already ended.</summary>
        public bool AttachServer(Socket server)
        {
            lock (_gate)
            {
                if (!_closed)
                {
                    _server = server;
                    return true;
                }
            }

            AbortSocket(server);
            return false;
        }

        /// <summary>Stops forwarding: from now on, pumps discard what they read.</summary>
        public void MarkBlackholed() => _blackholed = true;

        /// <summary>Cancels a send in progress, so its pump goes back to reading and discarding.</summary>
        public void CancelForwarding()
        {
            if (!_closed)
            {
                _forwarding.Cancel();
            }
        }

        /// <summary>Records one direction's clean end; true when both have ended.</summary>
        public bool HalfClose() => Interlocked.Increment(ref _halfClosed) == 2;

        /// <summary>Closes both sockets with a TCP RST.</summary>
        public void Abort()
        {
            Socket? server;
            lock (_gate)
            {
                if (_closed)
                {
                    return;
                }

                _closed = true;
                server = _server;
            }

            AbortSocket(Client);
            if (server is not null)
            {
                AbortSocket(server);
            }

        }

        /// <summary>Closes both sockets normally.</summary>
        public void Close()
        {
            Socket? server;
            lock (_gate)
            {
                if (_closed)
                {
                    return;
                }

                _closed = true;
                server = _server;
            }

            Client.Dispose();
            server?.Dispose();
        }

        private static void AbortSocket(Socket socket)
        {
            try
            {
                // Linger on with a zero timeout makes close() send RST instead of FIN.
                socket.LingerState = new LingerOption(true, 0);
            }
            catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
            {
                // Already failed or closed: closing is all that's left.
            }

            socket.Close();
        }
    }
}
