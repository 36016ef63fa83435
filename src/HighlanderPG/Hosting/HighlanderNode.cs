using HighlanderPG.Diagnostics;
using HighlanderPG.Leasing;
using HighlanderPG.Supervision;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Npgsql;

namespace HighlanderPG.Hosting;

/// <summary>
/// One HighlanderPG node inside a host: its lock session, its follower waiter and a runner per singleton.
/// Starting it never waits for the database: with no database, the host starts and no child runs.
/// </summary>
internal sealed class HighlanderNode : IHostedService, IClusterSingletons, IAsyncDisposable
{
    private readonly HighlanderOptions _options;
    private readonly IReadOnlyList<SingletonRegistration> _registrations;
    private readonly IServiceProvider _services;
    private readonly ILoggerFactory _loggerFactory;
    private readonly ILogger _logger;
    private readonly IHostApplicationLifetime? _lifetime;
    private readonly TimeProvider _time;
    private CancellationTokenSource[] _runnerStops = [];
    private readonly CancellationTokenSource _sessionStopping = new();

    private readonly ChangeFeed<SingletonStateChanged> _stateEvents = new();
    private List<SingletonRunner> _runners = [];
    private NpgsqlDataSource? _lockDataSource;
    private NpgsqlDataSource? _waitDataSource;
    private Task _sessionTask = Task.CompletedTask;
    private Task _waiterTask = Task.CompletedTask;
    private Task _runnersTask = Task.CompletedTask;
    private int _stopped;
    private readonly IReadOnlyList<Groups.SingletonGroup> _groups;
    private readonly ChangeFeed<Groups.GroupMemberChanged> _groupEvents = new();

    public HighlanderNode(
        IOptions<HighlanderOptions> options,
        IEnumerable<SingletonRegistration> registrations,
        IServiceProvider services,
        ILoggerFactory loggerFactory,
        TimeProvider time,
        IHostApplicationLifetime? lifetime = null)
    {
        _options = options.Value;
        _registrations = registrations.ToList();
        _services = services;
        _loggerFactory = loggerFactory;
        _logger = loggerFactory.CreateLogger("HighlanderPG");
        _time = time;
        _lifetime = lifetime;
        _groups = services.GetService(typeof(IEnumerable<Groups.SingletonGroup>)) is IEnumerable<Groups.SingletonGroup> groups ? groups.ToList() : [];
    }

    public string NodeId => _options.NodeId;

    public event EventHandler<SingletonStateChanged>? StateChanged
    {
        add => _stateEvents.Changed += value;
        remove => _stateEvents.Changed -= value;
    }

    internal LockSession? Session { get; private set; }

    public Task StartAsync(CancellationToken cancellationToken)
    {
        var connection = ConnectionSettings.Parse(_options.ConnectionString!);
        _lockDataSource = ConnectionSettings.BuildDataSource(connection, HolderQuery.ApplicationNamePrefix + _options.NodeId, _options, _loggerFactory, autoPrepare: true);
        _waitDataSource = ConnectionSettings.BuildDataSource(connection, HolderQuery.WaiterApplicationNamePrefix + _options.NodeId, _options, _loggerFactory);
        var dataSourceName = ConnectionSettings.Describe(connection);
        Log.NodeStarting(_logger, _options.NodeId, _registrations.Count, dataSourceName, _options.LeaseDuration);

        var timings = LeaseTimings.From(_options);
        var session = new LockSession(_options, timings, _lockDataSource, dataSourceName, _registrations.Count, _time, _logger);
        Session = session;
        session.ReleasesSent = OnReleasesSent;
        _runners = _registrations.Select(r =>
        {
            var singleton = _options.SingletonDefaults.CopyTo(new ClusterSingletonOptions());
            r.Configure?.Invoke(singleton);
            var key = singleton.Key ?? SingletonKey.Derive(_options.Namespace, r.Name);
            return new SingletonRunner(r, singleton, key, _options, timings, session, _services, _time, _logger, Publish, () => _lifetime?.StopApplication());
        }).ToList();

        // Spread placement (docs/lease-protocol.md, "Placement"): each singleton's preferences, and a graceful hand-over.
        var placed = _runners.Select(r => (r.Key, r.Name, (IReadOnlyList<string>)[.. r.PreferredNodes])).ToList();
        var byKey = _runners.ToDictionary(r => r.Key);
        session.ConfigurePlacement(placed, (key, holdOff) => byKey.TryGetValue(key, out var runner) ? runner.StepDownAsync(holdOff) : Task.CompletedTask);

        session.HoldOffStepDown += StepDownHeldOff;
        var waiter = new LockWaiter(_options, timings, _waitDataSource, session, _time, _logger);
        _stateEvents.Start(this, ex => Log.StateChangedHandlerFailed(_logger, ex));
        _groupEvents.Start(this, ex => Log.MemberChangedHandlerFailed(_logger, ex));
        foreach (var group in _groups)
        {
            group.Attach(_options.NodeId, _time, _groupEvents.Publish);
        }

        _sessionTask = Task.Run(() => session.RunAsync(_sessionStopping.Token), CancellationToken.None);
        _waiterTask = Task.Run(() => waiter.RunAsync(_sessionStopping.Token), CancellationToken.None);
        // Each runner is told to stop by a token of its own: a child's cancellation callback that blocks then holds up only
        // its own runner's signal, never the others' (cancelling one shared token runs every callback on one thread).
        _runnerStops = _runners.Select(_ => new CancellationTokenSource()).ToArray();
        _runnersTask = Task.WhenAll(_runners.Select((r, i) =>
        {
            var stop = _runnerStops[i].Token;
            return Task.Run(() => r.RunAsync(stop), CancellationToken.None);
        }));
        if (_options.RehearseTakeOver)
        {
            AutomaticRehearsal = RehearseWhenSettledAsync();
        }

        return Task.CompletedTask;
    }

    /// <summary>The rehearsal of <see cref="HighlanderOptions.RehearseTakeOver"/>: ends once it has run (or was given up, or the node stopped first); never faults.</summary>
    internal Task AutomaticRehearsal { get; private set; } = Task.CompletedTask;

    /// <summary>Set by the first state change that has a singleton led by this node or by another one (a rehearsal waits for it).</summary>
    private readonly TaskCompletionSource _settled = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>
    /// <see cref="HighlanderOptions.RehearseTakeOver"/>: once this node leads or follows another node, a rehearsal with a
    /// child of the library's own that runs until it is stopped (docs/lease-protocol.md, "Rehearsal"). Not before: the
    /// start of the node's own singletons comes first. Ended by the node's stop.
    /// </summary>
    private async Task RehearseWhenSettledAsync()
    {
        try
        {
            await _settled.Task.WaitAsync(_rehearsalStop.Token).ConfigureAwait(false);
            await RehearseAsync(WaitUntilStoppedAsync, RehearsalTimeout, _rehearsalStop.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            // The node stops first.
        }
        catch (ObjectDisposedException)
        {
            // Disposed meanwhile.
        }
        catch (Exception ex)
        {
            Log.RehearsalFailed(_logger, ex); // not expected: the real take-over then only runs slower the first time
        }
    }

    private async Task WaitUntilStoppedAsync(ILeadership leadership, IServiceProvider services, Action running, CancellationToken stopping)
    {
        running();
        try
        {
            await Task.Delay(Timeout.InfiniteTimeSpan, _time, stopping).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            // Stopped, as a child is.
        }
    }

    /// <summary>How long a round of an automatic rehearsal may take before it is given up (a drained node never takes its key).</summary>
    internal static readonly TimeSpan RehearsalTimeout = TimeSpan.FromSeconds(10);

    /// <summary>
    /// Graceful shutdown: every child is stopped first, then its lock is released and the other nodes are told,
    /// then the session is closed. It does not give up at the host's shutdown timeout: releasing a lock whose
    /// child may still run would break the at-most-once promise (escalation bounds the wait).
    /// </summary>
    public Task StopAsync(CancellationToken cancellationToken)
    {
        // Once: a second caller (the host after the CLI's signal handler began the stop, DisposeAsync after the host's
        // stop) waits for the same stop to end, never returns while children may still run.
        TaskCompletionSource? first = null;
        Task stop;
        lock (_stopGate)
        {
            if (_stopTask is null)
            {
                first = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                _stopTask = first.Task;
                Volatile.Write(ref _stopped, 1);
            }

            stop = _stopTask;
        }

        if (first is not null)
        {
            // The usual case at once, on the caller's thread (a signal's, under the CLI), before the rest of the stop runs
            // (compiled for the first time then: a node stops once): no rehearsal under way, so the runners are told now.
            bool told;
            try
            {
                told = TellRunnersUnlessRehearsing();
            }
            catch (Exception ex)
            {
                Log.RunnerStopFailed(_logger, ex); // not expected; the stop below tells them again
                told = false;
            }

            if (told)
            {
                // The rest of the stop only waits for the runners, then closes the sessions: started once they are done, so
                // that its code (compiled for the first time then) does not compete with the children's stop and the
                // release on the way to the next node's take-over.
                _ = _runnersTask.ContinueWith(
                    StopOnceRunnersDone,
                    (this, first),
                    CancellationToken.None,
                    TaskContinuationOptions.ExecuteSynchronously,
                    TaskScheduler.Default);
            }
            else
            {
                _ = StopOnceAsync(first, told);
            }
        }

        return stop;
    }

    private static void StopOnceRunnersDone(Task runners, object? state)
    {
        var (node, done) = ((HighlanderNode, TaskCompletionSource))state!;
        _ = node.StopOnceAsync(done, runnersTold: true);
    }

    /// <summary>
    /// Compiles the node's stop ahead (it runs once, when the node stops; the first code it runs is otherwise compiled
    /// then, on the way from a stop request to the children's stop): the methods, and their async state machines.
    /// </summary>
    internal void PrepareStop()
    {
        Precompile.Methods(typeof(HighlanderNode), nameof(StopAsync), nameof(TellRunnersUnlessRehearsing), nameof(TellRunners), nameof(StopOnceAsync), nameof(StopCoreAsync), nameof(StopOnceRunnersDone));
        Precompile.Methods(typeof(LockSession), nameof(LockSession.LeavePlacement), nameof(LockSession.GatherReleases));
        Precompile.Methods(typeof(KeyLedger), nameof(KeyLedger.GatherReleases));
        // And run once on a scratch ledger: the types its loops use are loaded now, not on the way to the children's stop.
        new KeyLedger().GatherReleases(0);
        PrepareMeasurements();
    }

    /// <summary>
    /// The metrics' generic recording code for the instruments' value types (a release records a measurement of its own,
    /// an acquisition another; a rehearsal records none, so the real one would compile it on its way).
    /// </summary>
    private static void PrepareMeasurements()
    {
        Precompile.Methods(typeof(System.Diagnostics.Metrics.Instrument<double>), "RecordMeasurement");
        Precompile.Methods(typeof(System.Diagnostics.Metrics.Instrument<long>), "RecordMeasurement");
    }

    /// <summary>
    /// After a rehearsal: compiles ahead what a real take-over runs and the rehearsal cannot (it runs a child of its own,
    /// and records no span or measurement): each registered singleton's factory and, for a delegate singleton, its
    /// delegate; the span and the measurements of an acquisition; the waiter's look for what to watch next.
    /// </summary>
    private void PrepareTakeOver()
    {
        foreach (var registration in _registrations)
        {
            Precompile.Delegate(registration.Factory);
            Precompile.Delegate(registration.Code);
        }

        Precompile.Methods(typeof(Diagnostics.HighlanderActivities), nameof(Diagnostics.HighlanderActivities.OnAcquired), "Emit");
        Precompile.Methods(typeof(Diagnostics.HighlanderMetrics), nameof(Diagnostics.HighlanderMetrics.Tags));
        Precompile.Methods(typeof(System.Diagnostics.Metrics.Counter<long>), nameof(System.Diagnostics.Metrics.Counter<long>.Add));
        Precompile.Methods(typeof(System.Diagnostics.Metrics.Histogram<double>), nameof(System.Diagnostics.Metrics.Histogram<double>.Record));
        PrepareMeasurements();
        Precompile.Methods(typeof(LockWaiter), "TargetsWithinAsync");
        Precompile.Methods(typeof(LockSession), "get_" + nameof(LockSession.AnyHoldOffs));
        Precompile.Methods(typeof(KeyLedger), "get_" + nameof(KeyLedger.AnyHoldOffs), "get_" + nameof(KeyLedger.AnyCovered));
    }

    /// <summary>The start of a stop: counted out of the placement, and, unless a rehearsal is under way, every runner told to stop.</summary>
    private bool TellRunnersUnlessRehearsing()
    {
        Session?.LeavePlacement(); // spread: counted out before its singletons are released (docs/lease-protocol.md, "Placement")
        if (!_rehearsal.IsCompleted)
        {
            return false;
        }

        _rehearsalStop.Cancel(); // no rehearsal starts from now on anyway (the node is stopping)
        TellRunners();
        return true;
    }

    private void TellRunners()
    {
        Session?.GatherReleases(_options.ReleaseGatherLimit); // one batch of releases, not one per child (docs/lease-protocol.md, "Releasing")
        foreach (var stop in _runnerStops)
        {
            if (StopRunnersInline)
            {
                stop.Cancel(); // the CLI's own children: their callbacks only signal the command's group
            }
            else
            {
                _ = stop.CancelAsync(); // not awaited: the runner bounds its child's stop, whatever the child's callbacks do
            }
        }
    }

    /// <summary>
    /// Whether a stop tells the runners on the stopping thread itself (their cancellation callbacks run there, at once),
    /// instead of on the thread pool: for the CLI, whose only children are its own (their callbacks signal the command's
    /// process group and return), so that the command gets its SIGTERM from the thread that heard highlander's, without
    /// waiting for a pool thread on a machine that is busy with the hand-over (docs/cli.md, "Hand-over: where the time
    /// goes"). Not for the library's users' children, whose callbacks may block.
    /// </summary>
    internal bool StopRunnersInline { get; set; }

    private readonly Lock _stopGate = new();
    private Task? _stopTask;

    private async Task StopOnceAsync(TaskCompletionSource done, bool runnersTold)
    {
        try
        {
            await StopCoreAsync(runnersTold).ConfigureAwait(false);
            done.SetResult();
        }
        catch (Exception ex)
        {
            done.SetException(ex);
        }
    }

    private async Task StopCoreAsync(bool runnersTold)
    {
        if (!runnersTold)
        {
            // A rehearsal under way ends first (its runner releases its private lock while the session still runs).
            await _rehearsalStop.CancelAsync().ConfigureAwait(false);
            await _rehearsal.ConfigureAwait(false);
            TellRunners();
        }

        try
        {
            await _runnersTask.ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            // Runners catch their own errors; whatever still escapes must not keep the session from closing.
            Log.RunnerStopFailed(_logger, ex);
        }

        await _sessionStopping.CancelAsync().ConfigureAwait(false);
        try
        {
            // Every lock is released by now. A session stuck connecting to a silent server holds nothing: don't wait for
            // its connect timeout; it ends on its own.
            var sessions = Task.WhenAll(_sessionTask, _waiterTask);
            await Task.WhenAny(sessions, Task.Delay(TimeSpan.FromSeconds(2), _time, CancellationToken.None)).ConfigureAwait(false);
            if (sessions.IsCompleted)
            {
                await sessions.ConfigureAwait(false);
            }
        }
        catch (Exception ex)
        {
            Log.SessionStopFailed(_logger, ex);
        }

        await _stateEvents.CompleteAsync().ConfigureAwait(false);
        await _groupEvents.CompleteAsync().ConfigureAwait(false);
    }

    public IReadOnlyList<SingletonStatus> GetAll() => _runners.Select(r => r.GetStatus()).ToList();

    public SingletonStatus? Get(string name) => _runners.FirstOrDefault(r => r.Name == name)?.GetStatus();

    public event EventHandler<Groups.GroupMemberChanged>? MemberChanged
    {
        add => _groupEvents.Changed += value;
        remove => _groupEvents.Changed -= value;
    }

    public IReadOnlyList<Groups.SingletonGroupStatus> GetGroups() => _groups.Select(g => g.GetStatus(Get(g.Name))).ToList();

    public Groups.SingletonGroupStatus? GetGroup(string name) => _groups.FirstOrDefault(g => g.Name == name)?.GetStatus(Get(name));

    public IAsyncEnumerable<Groups.GroupMemberChanged> WatchMembersAsync(CancellationToken cancellationToken = default) => _groupEvents.WatchAsync(cancellationToken);

    public Task StepDownAsync(string name, CancellationToken cancellationToken = default)
    {
        var runner = _runners.FirstOrDefault(r => r.Name == name)
            ?? throw new ArgumentException($"No cluster singleton named '{name}' runs on this node.", nameof(name));
        return runner.StepDownAsync().WaitAsync(cancellationToken);
    }

    private void StepDownIfHeldOff(LockSession session, string name)
    {
        if (_runners.FirstOrDefault(r => r.Name == name) is { } runner && runner.CurrentLease is { } lease
            && (session.IsHeldOff(runner.Key) || session.TakeCovered(lease)))
        {
            Log.HoldOffStepDown(_logger, runner.Name);
            // This lease only: by the time the task runs, the runner may lead under a later one that nothing covers.
            _ = Task.Run(() => runner.StepDownAsync(TimeSpan.Zero, lease));
        }
    }

    /// <summary>An operator's step-down or drain covers these keys this node holds: their runners step down (the session's hold-off keeps them from taking them back).</summary>
    private void StepDownHeldOff(IReadOnlyList<long> keys)
    {
        foreach (var runner in _runners.Where(r => keys.Contains(r.Key)))
        {
            Log.HoldOffStepDown(_logger, runner.Name);
            _ = runner.StepDownAsync(TimeSpan.Zero);
        }
    }

    public IAsyncEnumerable<SingletonStateChanged> WatchAsync(CancellationToken cancellationToken = default) => _stateEvents.WatchAsync(cancellationToken);

    /// <summary>The name a rehearsal's child sees (HIGHLANDER_NAME under the CLI); never a lock anyone else contends for.</summary>
    internal const string RehearsalName = "highlander-rehearsal";

    /// <summary>
    /// A node's private rehearsal key: derived from its node id in a namespace of its own, so that no singleton derives it
    /// (nobody else wants it) and a cluster snapshot can recognise it as a rehearsal's and leave it out (status, the
    /// dashboard: <see cref="Discovery.ClusterSnapshot"/>).
    /// </summary>
    internal static long RehearsalKey(string nodeId) => SingletonKey.Derive(RehearsalName, nodeId);

    /// <summary>The most private keys a rehearsal round takes at once (<see cref="RehearsalWidth"/>).</summary>
    internal const int MaxRehearsalWidth = 64;

    /// <summary>The <paramref name="index"/>th of a node's private rehearsal keys: the ones after <see cref="RehearsalKey(string)"/>.</summary>
    internal static long RehearsalKey(string nodeId, int index) => unchecked(RehearsalKey(nodeId) + index);

    /// <summary>Whether <paramref name="key"/> is one of <paramref name="nodeId"/>'s private rehearsal keys (a cluster snapshot leaves them out).</summary>
    internal static bool IsRehearsalKey(string nodeId, long key) => unchecked((ulong)(key - RehearsalKey(nodeId))) < MaxRehearsalWidth;

    /// <summary>
    /// How many private keys (and children) each rehearsal round takes at once: as many as the node has singletons, at
    /// most <see cref="MaxRehearsalWidth"/>. A node that may take over a thousand singletons at once runs the per-singleton
    /// path (the grant, the runner, the child's scope and start, the stop, the release) enough times in its rehearsal
    /// that the runtime has compiled it optimized before a real take-over: run only three times, it stayed at the JIT's
    /// quick first tier, and a take-over of a thousand ran a thousand times that unoptimized code and had it recompiled
    /// in the middle, on the same cores (docs/lease-protocol.md, "Rehearsal").
    /// </summary>
    internal int RehearsalWidth => Math.Clamp(_registrations.Count, 1, MaxRehearsalWidth);

    /// <summary>
    /// A rehearsal's child: a singleton's delegate that also calls <c>running</c> once it runs; the round then stops it
    /// the way a node's stop does (its stopping token). A child that returns without calling it ends its round instead.
    /// </summary>
    internal delegate Task RehearsalChild(ILeadership leadership, IServiceProvider services, Action running, CancellationToken stopping);

    /// <summary>How the private lock comes free in a round of the rehearsal (docs/lease-protocol.md, "Rehearsal").</summary>
    internal enum RehearsalRound
    {
        /// <summary>Nobody holds it: this node's try takes it at once.</summary>
        Free,

        /// <summary>A contender holds it and releases it the way a stepping-down node does (unlock and announce).</summary>
        HandedOver,

        /// <summary>A contender holds it and its session ends without a word, as a crashed node's does.</summary>
        HolderCrashed,
    }

    /// <summary>How a round of the rehearsal went: whether its child ran, and whether this node's waiter watched the contender before it let go.</summary>
    internal readonly record struct RehearsedRound(RehearsalRound Round, bool Ran, bool ContenderWatched);

    /// <summary>The rounds of a rehearsal, in order.</summary>
    internal static readonly RehearsalRound[] RehearsalRounds = [RehearsalRound.Free, RehearsalRound.HandedOver, RehearsalRound.HolderCrashed];

    /// <summary>
    /// Runs a take-over and a step-down through the real path, once per <see cref="RehearsalRounds">round</see>, each
    /// time on private locks, so that neither pays, the first time it happens in this process, for code running for the
    /// first time (docs/lease-protocol.md, "Rehearsal"): keys of its own (<see cref="RehearsalKey(string, int)"/>, as many
    /// as <see cref="RehearsalWidth"/>), that nobody else wants, are wanted by this node's session (and taken without an
    /// epoch bump, so no fencing row is left); in the second and third rounds a contender (a connection of this node's
    /// own, like its waiter's) holds them first, so the session's try fails, learns the holder and has its waiter watch
    /// it, and then the contender releases them with an announcement, in one statement (a graceful hand-over), or ends
    /// its session (a crash). A runner per key leads it like any singleton and starts <paramref name="run"/> as its child
    /// in a scope of its own; once every child runs, the round stops them as a node's stop would, and the runners release
    /// the locks. Quiet: no state change, span or measurement; its runner's messages are formatted and dropped, and one line
    /// is logged at debug. Skipped (false) under the spread placement (a try there is planned by the share) and when the
    /// node is not running; each round bounded by <paramref name="timeout"/> (a drained node never takes the keys: then
    /// it is abandoned, not run). With at least <see cref="TierUpWidth"/> keys, <see cref="TierUpRounds"/> more rounds
    /// (the keys free) follow, after pauses. Returns the rounds tried, in order (none when skipped; the last one not run
    /// when it was given up).
    /// </summary>
    internal Task<IReadOnlyList<RehearsedRound>> RehearseAsync(RehearsalChild run, TimeSpan timeout, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(run);
        if (Session is not { } session || _options.Placement == SingletonPlacement.Spread || Volatile.Read(ref _stopped) == 1)
        {
            return Task.FromResult<IReadOnlyList<RehearsedRound>>([]);
        }

        var rehearsal = RehearseRoundsAsync(session, run, timeout, cancellationToken);
        _rehearsal = rehearsal; // StopAsync ends it first
        return rehearsal;
    }

    /// <summary>
    /// Every round, in order: besides the three ways to take over, some code is prepared only on its second or third run
    /// (dependency injection compiles a service's resolver in the background after its second resolution, and that
    /// resolver is compiled by the JIT at its first call), and that should happen now, not at the real take-over.
    /// </summary>
    private async Task<IReadOnlyList<RehearsedRound>> RehearseRoundsAsync(LockSession session, RehearsalChild run, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var logger = _loggerFactory.CreateLogger("HighlanderPG.Rehearsal");
        var started = _time.GetTimestamp();
        var rounds = new List<RehearsedRound>();
        foreach (var round in RehearsalRounds)
        {
            var outcome = await RehearseCoreAsync(session, run, round, timeout, cancellationToken).ConfigureAwait(false);
            rounds.Add(outcome);
            if (!outcome.Ran)
            {
                break;
            }
        }

        // A node that may take over many singletons at once runs the per-singleton path again, a few times, after pauses:
        // the runtime counts calls towards its optimizing recompilation only once it has compiled nothing new for a
        // moment (about 100 ms), so the three rounds above, at the node's start, leave that path at its first, quick tier.
        if (RehearsalWidth >= TierUpWidth && rounds.Count == RehearsalRounds.Length && rounds.All(r => r.Ran))
        {
            for (var i = 0; i < TierUpRounds; i++)
            {
                await Task.Delay(TierUpPause, _time, cancellationToken).ConfigureAwait(false);
                var outcome = await RehearseCoreAsync(session, run, RehearsalRound.Free, timeout, cancellationToken).ConfigureAwait(false);
                rounds.Add(outcome);
                if (!outcome.Ran)
                {
                    break;
                }
            }
        }

        PrepareTakeOver();
        Log.Rehearsed(logger, rounds.All(r => r.Ran), _time.GetElapsedTime(started));
        return rounds;
    }

    /// <summary>From how many private keys per round a rehearsal adds its <see cref="TierUpRounds"/>.</summary>
    internal const int TierUpWidth = 32;

    /// <summary>
    /// Rounds (the keys free) that a rehearsal of at least <see cref="TierUpWidth"/> keys adds, each after
    /// <see cref="TierUpPause"/>, so that the runtime recompiles the per-singleton path optimized (its tiered compilation
    /// promotes a method after 30 counted calls, then again after 30 more with profile-guided optimization) before a
    /// real take-over of many singletons runs it (docs/lease-protocol.md, "Rehearsal").
    /// </summary>
    internal const int TierUpRounds = 3;

    /// <summary>The pause before each of the <see cref="TierUpRounds"/>: longer than the runtime's call-counting delay (100 ms).</summary>
    internal static readonly TimeSpan TierUpPause = TimeSpan.FromMilliseconds(300);

    private Task _rehearsal = Task.CompletedTask;
    private readonly CancellationTokenSource _rehearsalStop = new();

    private async Task<RehearsedRound> RehearseCoreAsync(LockSession session, RehearsalChild run, RehearsalRound round, TimeSpan timeout, CancellationToken cancellationToken)
    {
        // What a real acquisition also touches, in the same order.
        System.Runtime.CompilerServices.RuntimeHelpers.RunClassConstructor(typeof(HighlanderActivities).TypeHandle);
        System.Runtime.CompilerServices.RuntimeHelpers.RunClassConstructor(typeof(HighlanderMetrics).TypeHandle);
        var width = RehearsalWidth;
        var keys = new long[width];
        var registrations = new SingletonRegistration[width];
        var ended = new Task[width]; // each child runs (then the round stops it) or has returned
        for (var i = 0; i < width; i++)
        {
            var ran = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously); // the child has returned
            var running = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously); // the child runs
            keys[i] = RehearsalKey(_options.NodeId, i);
            ended[i] = Task.WhenAny(ran.Task, running.Task);
            registrations[i] = new SingletonRegistration(
                RehearsalName,
                typeof(DelegateSingleton),
                sp => new DelegateSingleton(sp.GetRequiredService<ILeadership>(), sp, async (leadership, services, token) =>
                {
                    try
                    {
                        await run(leadership, services, () => running.TrySetResult(), token).ConfigureAwait(false);
                    }
                    finally
                    {
                        ran.TrySetResult();
                    }
                }),
                configure: null);
        }

        var singleton = _options.SingletonDefaults.CopyTo(new ClusterSingletonOptions());
        singleton.RestartPolicy = RestartPolicy.Never; // done once it returns: the lock is kept until the round ends it
        foreach (var key in keys)
        {
            session.SetNeverFenced(key, on: true);
        }

        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _rehearsalStop.Token);
        var deadline = _time.GetTimestamp() + (long)(timeout.TotalSeconds * _time.TimestampFrequency);
        NpgsqlConnection? contender = null;
        var runnerTasks = new List<Task>(width);
        var done = false;
        var watched = false;
        try
        {
            if (round != RehearsalRound.Free)
            {
                using var bounded = new CancellationTokenSource(timeout, _time);
                using var opening = CancellationTokenSource.CreateLinkedTokenSource(stop.Token, bounded.Token);
                contender = await OpenContenderAsync(keys, opening.Token).ConfigureAwait(false);
            }

            // A round ends once every child runs (then they are stopped) or has returned (the runner keeps the lock, its
            // restart policy being Never, until the round ends it). Not when the runner reports Leading: a
            // BackgroundService's ExecuteAsync starts on the thread pool after StartAsync returns, and a stop that came
            // first would keep the child from running at all.
            for (var i = 0; i < width; i++)
            {
                var runner = new SingletonRunner(registrations[i], singleton, keys[i], _options, LeaseTimings.From(_options), session, _services, _time,
                    FormattingOnlyLogger.Instance, static _ => { }, static () => { }, rehearsal: true);
                runnerTasks.Add(Task.Run(() => runner.RunAsync(stop.Token), CancellationToken.None));
            }

            if (contender is not null)
            {
                // Once the session's try has failed and its waiter watches the contender (or soon after, if it never does:
                // the announcement alone wakes the session), the contender lets go of every key, in one statement.
                var watchedWithin = Remaining(deadline);
                watched = await WatchedAsync(session, keys[0], watchedWithin < WatchedAtMost ? watchedWithin : WatchedAtMost, stop.Token).ConfigureAwait(false);
                if (round == RehearsalRound.HandedOver)
                {
                    var unlocking = LockProtocol.UnlockAndNotifyAsync(contender, keys);
                    try
                    {
                        await unlocking.WaitAsync(stop.Token).ConfigureAwait(false);
                    }
                    catch (OperationCanceledException)
                    {
                        // A cut-off server does not answer: the node's stop does not wait for the command's timeout. The
                        // contender (its private lock with it) is closed once the command gives up.
                        var abandoned = contender;
                        contender = null;
                        _ = unlocking.ContinueWith(static (t, c) => { _ = t.Exception; ((NpgsqlConnection)c!).Dispose(); }, abandoned, CancellationToken.None, TaskContinuationOptions.None, TaskScheduler.Default);
                        throw;
                    }
                }

                await contender.DisposeAsync().ConfigureAwait(false); // a crash, as the server sees it: the session just ends
                contender = null;
            }

            await Task.WhenAll(ended).WaitAsync(Remaining(deadline), _time, stop.Token).ConfigureAwait(false);
            done = true;
        }
        catch (Exception ex) when (ex is TimeoutException or OperationCanceledException or NpgsqlException)
        {
            // Not taken in time (a drained node, a lost session), no contender (the server refused one), or the node is
            // stopping: given up.
        }
        finally
        {
            if (contender is not null)
            {
                await contender.DisposeAsync().ConfigureAwait(false);
            }

            // Each runner stops its child (as a node's stop does) and releases its lock (announced like any release)
            // before it returns.
            await stop.CancelAsync().ConfigureAwait(false);
            await Task.WhenAll(runnerTasks).ConfigureAwait(false);
            foreach (var key in keys)
            {
                session.SetNeverFenced(key, on: false);
            }
        }

        return new RehearsedRound(round, done, watched);
    }

    private TimeSpan Remaining(long deadline)
    {
        var left = (deadline - _time.GetTimestamp()) / (double)_time.TimestampFrequency;
        return left > 0 ? TimeSpan.FromSeconds(left) : TimeSpan.Zero;
    }

    /// <summary>A rehearsal's contender: a connection of this node's waiter's kind, holding <paramref name="keys"/>.</summary>
    private async Task<NpgsqlConnection> OpenContenderAsync(long[] keys, CancellationToken cancellationToken)
    {
        // Against a silent server this may go on after the token is cancelled (a node's stop was seen to wait 15 s, Npgsql's
        // connect timeout): the node's stop, which waits for a rehearsal under way, must not wait for that.
        var opening = OpenAndLockContenderAsync(keys, cancellationToken);
        try
        {
            return await opening.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            _ = opening.ContinueWith(static t => { if (t.IsCompletedSuccessfully) { t.Result.Dispose(); } else { _ = t.Exception; } }, CancellationToken.None, TaskContinuationOptions.None, TaskScheduler.Default);
            throw;
        }
    }

    private async Task<NpgsqlConnection> OpenAndLockContenderAsync(long[] keys, CancellationToken cancellationToken)
    {
        var connection = await _waitDataSource!.OpenConnectionAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            // Nobody else wants these keys: each is free, or held for a moment by this node's session (a round given up
            // is released as its runners end), which the lock waits for.
            await using var cmd = new NpgsqlCommand("SELECT count(pg_advisory_lock(k)) FROM unnest($1::bigint[]) AS k", connection);
            cmd.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = keys });
            await cmd.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            return connection;
        }
        catch
        {
            await connection.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>
    /// Until this node's waiter watches <paramref name="key"/>'s holder, at most <paramref name="within"/> (no event
    /// says so; looked at every few milliseconds: a rehearsal runs once).
    /// </summary>
    private async Task<bool> WatchedAsync(LockSession session, long key, TimeSpan within, CancellationToken cancellationToken)
    {
        var until = _time.GetTimestamp() + (long)(within.TotalSeconds * _time.TimestampFrequency);
        while (!session.IsWatching(key))
        {
            if (_time.GetTimestamp() >= until)
            {
                return false;
            }

            await Task.Delay(WatchedPoll, _time, cancellationToken).ConfigureAwait(false);
        }

        return true;
    }

    private static readonly TimeSpan WatchedPoll = TimeSpan.FromMilliseconds(5);

    /// <summary>How long a contender waits at most for the waiter to watch it (it does within a tenth of a second here).</summary>
    private static readonly TimeSpan WatchedAtMost = TimeSpan.FromSeconds(2);

    /// <summary>
    /// Called with every state change synchronously, on the thread that made it (a runner's), before the subscribers of
    /// <see cref="WatchAsync"/> hear of it: for the CLI, which lowers its priority the moment its name is released while
    /// stopping (docs/cli.md, "Hand-over: where the time goes"), not several hops later. Must be quick and not block;
    /// an exception from it is logged and changes nothing else.
    /// </summary>
    internal Action<SingletonStateChanged>? StateChangedInline { get; set; }

    /// <summary>
    /// Called synchronously on the lock session's loop right after a batch of releases of registered singletons (not only
    /// a rehearsal's private keys) was written to the server, before its answer: for the CLI, which lowers its priority then while stopping, so that what it still runs (reading that
    /// answer, its own shutdown, compiled for the first time then) does not compete with the node taking over
    /// (docs/cli.md, "Hand-over: where the time goes"). Must be quick and not block; an exception from it is logged.
    /// </summary>
    internal Action? ReleasesSentInline { get; set; }

    private void OnReleasesSent(long[] keys)
    {
        if (ReleasesSentInline is { } inline && Array.Exists(keys, key => !IsRehearsalKey(_options.NodeId, key)))
        {
            try
            {
                inline();
            }
            catch (Exception ex)
            {
                Log.StateChangedHandlerFailed(_logger, ex);
            }
        }
    }

    private void Publish(SingletonStateChanged change)
    {
        if (StateChangedInline is { } inline)
        {
            try
            {
                inline(change);
            }
            catch (Exception ex)
            {
                Log.StateChangedHandlerFailed(_logger, ex);
            }
        }

        if (change.Current == SingletonState.Leading || (change.Current == SingletonState.Following && change.Leader is { } leader && leader.NodeId != _options.NodeId))
        {
            _settled.TrySetResult();
        }

        _stateEvents.Publish(change);
        if (change.Current is SingletonState.Starting or SingletonState.Leading && Session is { AnyHoldOffs: true } session)
        {
            // Took it while a hold-off came in (between the try and the lease reaching the runner): step down now.
            StepDownIfHeldOff(session, change.Name);
        }
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync(CancellationToken.None).ConfigureAwait(false);
        if (_lockDataSource is not null)
        {
            await _lockDataSource.DisposeAsync().ConfigureAwait(false);
        }

        if (_waitDataSource is not null)
        {
            await _waitDataSource.DisposeAsync().ConfigureAwait(false);
        }

        foreach (var stop in _runnerStops)
        {
            stop.Dispose();
        }

        _sessionStopping.Dispose();
        _rehearsalStop.Dispose();
    }
}
