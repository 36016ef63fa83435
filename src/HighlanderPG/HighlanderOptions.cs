namespace HighlanderPG;

/// <summary>
/// Options of one HighlanderPG node: the PostgreSQL session that holds the locks of all of this
/// node's cluster singletons, and the lease that the server enforces on it.
/// </summary>
/// <remarks>
/// The timing options must fit inside each other; they are validated when the host starts:
/// <c>2 × HeartbeatInterval + StopTimeout + SafetyMargin ≤ LeaseDuration</c>, so that a healthy node
/// may miss one heartbeat without stopping its children, and a cut-off node has its children stopped
/// (and escalates) before the server could give the lock to anyone else.
/// </remarks>
public sealed class HighlanderOptions
{
    /// <summary>
    /// The PostgreSQL connection string. HighlanderPG builds its own dedicated, non-pooled data source
    /// from it (<c>Pooling</c> is forced off); <c>Multiplexing=true</c> is refused.
    /// </summary>
    /// <value>Required; there is no default.</value>
    public string? ConnectionString { get; set; }

    /// <summary>
    /// The namespace that singleton names are hashed in, so that other users of advisory locks in the
    /// same database (and other applications using HighlanderPG) don't collide with these keys.
    /// </summary>
    /// <value>The default is <c>highlander</c>.</value>
    public string Namespace { get; set; } = "highlander";

    /// <summary>
    /// This node's identity, shown to other nodes (as part of the session's <c>application_name</c>),
    /// in status and in logs. At most 40 printable ASCII characters.
    /// </summary>
    /// <value>The default is <c>{machine name}:{process id}</c>.</value>
    public string NodeId { get; set; } = DefaultNodeId();

    /// <summary>
    /// The lease: the server ends this node's lock session (freeing its locks) after this long without
    /// hearing from it, through <c>idle_session_timeout</c>. A cut-off leader is replaced after about this long.
    /// </summary>
    /// <value>The default is 15 seconds. At least 1 second, in whole milliseconds.</value>
    public TimeSpan LeaseDuration { get; set; } = TimeSpan.FromSeconds(15);

    /// <summary>How often the node renews its lease with a round trip (which also retries the locks it wants).</summary>
    /// <value>The default is 2 seconds.</value>
    public TimeSpan HeartbeatInterval { get; set; } = TimeSpan.FromSeconds(2);

    /// <summary>
    /// How long a child is given to stop after it is told to (its <see cref="Microsoft.Extensions.Hosting.IHostedService.StopAsync"/>
    /// token fires then). A child still running after that is escalated (see <see cref="OnEscalation"/>).
    /// </summary>
    /// <value>The default is 5 seconds.</value>
    public TimeSpan StopTimeout { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>
    /// Safety margin subtracted from the lease on the node's own monotonic clock: it covers clock-rate drift,
    /// scheduling delays and the escalation itself.
    /// </summary>
    /// <value>The default is 1 second.</value>
    public TimeSpan SafetyMargin { get; set; } = TimeSpan.FromSeconds(1);

    /// <summary>
    /// After a server (re)start, no lock is taken until the server has been up this long, so that holders
    /// cut off by the restart have stopped their children first (a lock-delay).
    /// </summary>
    /// <value>The default (<see langword="null"/>) is <see cref="LeaseDuration"/>.</value>
    public TimeSpan? LockDelayAfterServerStart { get; set; }

    /// <summary>The first delay before reconnecting after a failed connection; it doubles up to <see cref="ReconnectMaxDelay"/>, with jitter.</summary>
    /// <value>The default is 250 milliseconds.</value>
    public TimeSpan ReconnectMinDelay { get; set; } = TimeSpan.FromMilliseconds(250);

    /// <summary>The longest delay between reconnection attempts.</summary>
    /// <value>The default is 10 seconds.</value>
    public TimeSpan ReconnectMaxDelay { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>
    /// How long a follower's blocking wait for a held lock may last before it is restarted. The wait holds a
    /// snapshot while blocked; bounding it keeps VACUUM unblocked.
    /// </summary>
    /// <value>
    /// The default (<see langword="null"/>) is 5 seconds, or a third of <see cref="LeaseDuration"/> when that is shorter
    /// (1 second for a 3-second lease), so that any valid lease works without setting it. An explicit value must be
    /// positive and shorter than <see cref="LeaseDuration"/>.
    /// </value>
    public TimeSpan? WaitSlice { get; set; }

    /// <summary>After a programmatic step-down, how long this node leaves the singleton to others before contending again.</summary>
    /// <value>The default is 5 seconds.</value>
    public TimeSpan StepDownHoldOff { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>
    /// Once this node leads or follows another node for the first time, it rehearses a take-over and a release on a
    /// private lock (three rounds: the lock free, handed over, its holder crashed), so that its first real take-over
    /// and stop do not pay for HighlanderPG's own code running for the first time in the process (the JIT compiling it):
    /// about 0.1-0.3 s of one core, once, and up to two extra connections for a moment. None of your singletons runs in
    /// it, and no state change, span or measurement is published for it (one debug line is logged). See
    /// docs/lease-protocol.md, "Rehearsal".
    /// </summary>
    /// <value>The default is <see langword="true"/>. Never under <see cref="SingletonPlacement.Spread"/>.</value>
    public bool RehearseTakeOver { get; set; } = true;

    /// <summary>
    /// Opt-in to a documented weaker mode on servers without <c>idle_session_timeout</c> (PostgreSQL older than 14):
    /// the node still stops its children at its own deadline, but the server frees a cut-off holder's locks only when
    /// its TCP keepalive (set per session) gives up, so a replacement can take much longer than the lease.
    /// </summary>
    /// <value>The default is <see langword="false"/>: such servers are refused.</value>
    public bool AllowWithoutServerLease { get; set; }

    /// <summary>
    /// Confirms that the connection goes through a pooler in <em>session</em> mode (PgBouncer <c>pool_mode=session</c>).
    /// Without it, a connection whose backend identity differs from the one the server reports is refused,
    /// since a transaction-mode pooler silently breaks session locks.
    /// </summary>
    /// <value>The default is <see langword="false"/>.</value>
    public bool AllowSessionModePooler { get; set; }

    /// <summary>
    /// Called when a child cannot be stopped in time: it ignored cancellation past <see cref="StopTimeout"/> (or the lease's
    /// end, whichever comes first). The handler takes over the responsibility that the child no longer runs when the lease
    /// ends; after it returns, the lock is released only once the child has really ended. When <see langword="null"/>, HighlanderPG logs a critical message and ends the process
    /// (<see cref="Environment.FailFast(string)"/>), which also ends its PostgreSQL sessions.
    /// </summary>
    /// <value>The default is <see langword="null"/>: end the process.</value>
    public Func<EscalationContext, ValueTask>? OnEscalation { get; set; }

    /// <summary>
    /// Fencing tokens: every acquisition gets an epoch strictly greater than every earlier one for that singleton,
    /// stored durably in <c>{FencingSchema}.leases</c> (created on first use), and writes can be guarded with
    /// <see cref="Fencing.FencingGuard"/> or <c>SELECT {FencingSchema}.assert_epoch(name, epoch)</c>. The table also
    /// publishes each leader's node id, host and <see cref="Endpoint"/> for discovery. With fencing off, no table is created.
    /// </summary>
    /// <value>The default is <see langword="false"/>.</value>
    public bool Fencing { get; set; }

    /// <summary>The schema of the fencing table and function: a lowercase SQL identifier.</summary>
    /// <value>The default is <c>highlander</c>.</value>
    public string FencingSchema { get; set; } = "highlander";

    /// <summary>
    /// What this node publishes about itself while it leads (with <see cref="Fencing"/> on): an address others can reach
    /// it at, such as a URL. Discovery returns it.
    /// </summary>
    /// <value>The default is <see langword="null"/>.</value>
    public string? Endpoint { get; set; }

    /// <summary>
    /// Configures the Npgsql data sources of this node's two dedicated sessions (the lock session and the follower's wait
    /// session), for what a connection string cannot say: a rotating token or IAM password
    /// (<see cref="Npgsql.NpgsqlDataSourceBuilder.UsePeriodicPasswordProvider"/>), SSL callbacks
    /// (<see cref="Npgsql.NpgsqlDataSourceBuilder.UseSslClientAuthenticationOptionsCallback"/>,
    /// <see cref="Npgsql.NpgsqlDataSourceBuilder.UseUserCertificateValidationCallback"/>), and so on. It is called once per session.
    /// </summary>
    /// <value>The default is <see langword="null"/>.</value>
    /// <remarks>
    /// After it runs, HighlanderPG applies its own settings again, over whatever the hook set: <c>Pooling=false</c>,
    /// <c>Multiplexing=false</c>, <c>Application Name=highlander/{NodeId}</c> (or <c>highlander-wait/{NodeId}</c>),
    /// <c>Keepalive=0</c>, its <c>Command Timeout</c> and <c>Enlist=false</c>, and a tracing configuration that keeps every
    /// statement of these sessions out of Npgsql's traces.
    /// </remarks>
    public Action<Npgsql.NpgsqlDataSourceBuilder>? ConfigureDataSource { get; set; }

    /// <summary>
    /// Which node takes a free singleton: <see cref="SingletonPlacement.FirstComer"/> (whoever tries first) or
    /// <see cref="SingletonPlacement.Spread"/> (each live node of the namespace using it leads at most its share; see
    /// docs/lease-protocol.md, "Placement"). Every node of a namespace should use the same placement and register the same
    /// singletons: a node's share is its own number of singletons divided by the number of live spread nodes.
    /// </summary>
    /// <value>The default is <see cref="SingletonPlacement.FirstComer"/>.</value>
    public SingletonPlacement Placement { get; set; } = SingletonPlacement.FirstComer;

    /// <summary>
    /// Spread placement: how long a node at or above its share leaves a free singleton to nodes below theirs before it takes
    /// it anyway; also how long a new session waits for nodes started with it to join before it takes any, and how long a
    /// node that handed a singleton over leaves it alone. A singleton is never left unled for much longer than this because
    /// of placement.
    /// </summary>
    /// <value>The default (<see langword="null"/>) is <see cref="HeartbeatInterval"/>. Positive, at most <see cref="LeaseDuration"/>.</value>
    public TimeSpan? SpreadGrace { get; set; }

    /// <summary>
    /// Spread placement: how long a node must have been live (its lock session up) before nodes above their share hand
    /// singletons over to it, so that a node that comes and goes causes no hand-overs.
    /// </summary>
    /// <value>The default (<see langword="null"/>) is 5 × <see cref="HeartbeatInterval"/>. Not negative.</value>
    public TimeSpan? SpreadSettleTime { get; set; }

    /// <summary>The defaults for each singleton's restart behaviour; each singleton may override them.</summary>
    public ClusterSingletonOptions SingletonDefaults { get; } = new();

    /// <summary>
    /// How long at most a node's stop holds the releases of the children that have returned for those still stopping, so
    /// that its singletons are released in one batch (docs/lease-protocol.md, "Releasing"). Not an option users set: tests
    /// lengthen it to observe the gathering.
    /// </summary>
    internal TimeSpan ReleaseGatherLimit { get; set; } = TimeSpan.FromMilliseconds(250);

    internal static string DefaultNodeId()
    {
        var host = new string(Environment.MachineName.Where(c => c is > ' ' and < (char)127).Take(28).ToArray());
        return $"{(host.Length == 0 ? "node" : host)}:{Environment.ProcessId}";
    }
}

/// <summary>Says what a normal completion of a child means.</summary>
public enum RestartPolicy
{
    /// <summary>Any exit (normal or failure) releases the lock and the singleton is contended for again.</summary>
    Always,

    /// <summary>A failure is restarted; a normal completion is final: the node keeps the lock (so the work does not run elsewhere) without a child.</summary>
    OnFailure,

    /// <summary>No exit is restarted: the node keeps the lock without a child until it stops or loses the session.</summary>
    Never,
}

/// <summary>
/// Specifies a behavior that a node will exhibit when a cluster singleton crash-loops: it restarts more often than its
/// restart intensity (<see cref="ClusterSingletonOptions.MaxRestarts"/> within <see cref="ClusterSingletonOptions.RestartWindow"/>) allows.
/// </summary>
public enum CrashLoopBehavior
{
    /// <summary>
    /// Stops the <see cref="Microsoft.Extensions.Hosting.IHost"/> instance (like an OTP supervisor giving up), after logging
    /// the crash loop as a critical error, so that the app's orchestrator can restart it.
    /// </summary>
    /// <remarks>
    /// If this is used, the host's other services and cluster singletons are stopped too, in the host's normal shutdown order:
    /// every child is stopped before its lock is released.
    /// </remarks>
    StopHost = 0,

    /// <summary>
    /// Ignores the singleton on this node from then on: logs the crash loop as a critical error and stops contending for it
    /// (its state becomes <see cref="SingletonState.Faulted"/> and the health check reports a failure), while the host keeps running.
    /// </summary>
    /// <remarks>
    /// If this is used, other nodes may still run the singleton; this node does not try it again until the host restarts.
    /// </remarks>
    GiveUp = 1,
}

/// <summary>Restart behaviour and identity of one cluster singleton.</summary>
public sealed class ClusterSingletonOptions
{
    /// <summary>What a normal completion of the child means.</summary>
    /// <value>The default is <see cref="RestartPolicy.Always"/>.</value>
    public RestartPolicy RestartPolicy { get; set; } = RestartPolicy.Always;

    /// <summary>Restart intensity: at most this many restarts on this node within <see cref="RestartWindow"/>.</summary>
    /// <value>The default is 5.</value>
    public int MaxRestarts { get; set; } = 5;

    /// <summary>The window of the restart intensity.</summary>
    /// <value>The default is 60 seconds.</value>
    public TimeSpan RestartWindow { get; set; } = TimeSpan.FromSeconds(60);

    /// <summary>How long this node waits after its child exited before it contends again (other nodes are told at once).</summary>
    /// <value>The default is 1 second.</value>
    public TimeSpan RestartDelay { get; set; } = TimeSpan.FromSeconds(1);

    /// <summary>
    /// Gets or sets the behavior the node exhibits when this singleton crash-loops (restarts more than <see cref="MaxRestarts"/>
    /// times within <see cref="RestartWindow"/>).
    /// </summary>
    /// <value>The default is <see cref="CrashLoopBehavior.StopHost"/>.</value>
    public CrashLoopBehavior CrashLoopBehavior { get; set; } = CrashLoopBehavior.StopHost;

    /// <summary>An explicit 64-bit advisory lock key; when <see langword="null"/>, the key is derived from the namespace and name (see <see cref="SingletonKey"/>).</summary>
    public long? Key { get; set; }

    /// <summary>
    /// Under <see cref="SingletonPlacement.Spread"/>: the nodes this singleton should run on while one of them is alive, as
    /// node ids where <c>*</c> matches any run of characters (<c>eu-*</c>, <c>*-gpu</c>: node ids with a common prefix or
    /// suffix work as tags). A live preferred node takes it regardless of its share, and a leader that is not preferred hands
    /// it over once a preferred node has been live for <see cref="HighlanderOptions.SpreadSettleTime"/>; with none alive,
    /// the singleton is spread like any other.
    /// </summary>
    /// <value>Empty by default: no preference.</value>
    public IList<string> PreferredNodes { get; } = [];

    internal ClusterSingletonOptions CopyTo(ClusterSingletonOptions target)
    {
        if (!ReferenceEquals(target.PreferredNodes, PreferredNodes))
        {
            target.PreferredNodes.Clear();
            foreach (var pattern in PreferredNodes)
            {
                target.PreferredNodes.Add(pattern);
            }
        }

        target.RestartPolicy = RestartPolicy;
        target.MaxRestarts = MaxRestarts;
        target.RestartWindow = RestartWindow;
        target.RestartDelay = RestartDelay;
        target.CrashLoopBehavior = CrashLoopBehavior;
        target.Key = Key;
        return target;
    }
}

/// <summary>What an escalation handler is told.</summary>
public sealed class EscalationContext
{
    internal EscalationContext(string singleton, string nodeId, string reason, TimeSpan? remainingLease)
    {
        Singleton = singleton;
        NodeId = nodeId;
        Reason = reason;
        RemainingLease = remainingLease;
    }

    /// <summary>The singleton whose child could not be stopped, or that crash-looped.</summary>
    public string Singleton { get; }

    /// <summary>This node.</summary>
    public string NodeId { get; }

    /// <summary>Why HighlanderPG escalates, in words.</summary>
    public string Reason { get; }

    /// <summary>
    /// How long until the server may give the lock to another node, on this node's monotonic clock: the send time of the
    /// last request the server acknowledged, plus <see cref="HighlanderOptions.LeaseDuration"/>, minus now. While the
    /// session still holds the lock (a step-down or shutdown whose child would not stop), it is what the server would wait
    /// if the node went silent now.
    /// </summary>
    /// <value>
    /// Never negative. <see cref="TimeSpan.Zero"/> when that point has passed (e.g. after a pause) or the session broke:
    /// the server may already have freed the lock, so assume it is gone now. <see langword="null"/> when the escalation
    /// is not about a lease.
    /// </value>
    public TimeSpan? RemainingLease { get; }
}
