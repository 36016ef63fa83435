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
        _lockDataSource = ConnectionSettings.BuildDataSource(connection, HolderQuery.ApplicationNamePrefix + _options.NodeId, _options, _loggerFactory);
        _waitDataSource = ConnectionSettings.BuildDataSource(connection, HolderQuery.WaiterApplicationNamePrefix + _options.NodeId, _options, _loggerFactory);
        var dataSourceName = ConnectionSettings.Describe(connection);
        Log.NodeStarting(_logger, _options.NodeId, _registrations.Count, dataSourceName, _options.LeaseDuration);

        var timings = LeaseTimings.From(_options);
        var session = new LockSession(_options, timings, _lockDataSource, dataSourceName, _registrations.Count, _time, _logger);
        Session = session;
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
        return Task.CompletedTask;
    }

    /// <summary>
    /// Graceful shutdown: every child is stopped first, then its lock is released and the other nodes are told,
    /// then the session is closed. It does not give up at the host's shutdown timeout: releasing a lock whose
    /// child may still run would break the at-most-once promise (escalation bounds the wait).
    /// </summary>
    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (Interlocked.Exchange(ref _stopped, 1) == 1)
        {
            return;
        }

        Session?.LeavePlacement(); // spread: counted out before its singletons are released (docs/lease-protocol.md, "Placement")

        // A rehearsal under way ends first (its runner releases its private lock while the session still runs).
        await _rehearsalStop.CancelAsync().ConfigureAwait(false);
        await _rehearsal.ConfigureAwait(false);
        foreach (var stop in _runnerStops)
        {
            _ = stop.CancelAsync(); // not awaited: the runner bounds its child's stop, whatever the child's callbacks do
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
        if (_runners.FirstOrDefault(r => r.Name == name) is { } runner && session.IsHeldOff(runner.Key))
        {
            Log.HoldOffStepDown(_logger, runner.Name);
            _ = Task.Run(() => runner.StepDownAsync(TimeSpan.Zero));
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
    /// Runs a take-over and a release twice through the real path, each time on a private lock, so that neither pays,
    /// the first time it happens in this process, for code running for the first time (docs/lease-protocol.md,
    /// "Rehearsal"): a random key, never contended, is acquired by this node's session (without an epoch bump, so no
    /// fencing row is left), a runner starts <paramref name="run"/> as its child in a scope of its own like any
    /// singleton's, and once the child has returned the runner releases the lock. Quiet: no state
    /// change, span or measurement; its runner's messages are formatted and dropped, and one line is logged at debug.
    /// Skipped (false) under the spread placement (a try there is planned by the share) and when the node is not
    /// running; bounded by <paramref name="timeout"/> (a drained node never takes the key: then it is abandoned, false).
    /// </summary>
    internal Task<bool> RehearseAsync(Func<ILeadership, IServiceProvider, CancellationToken, Task> run, TimeSpan timeout, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(run);
        if (Session is not { } session || _options.Placement == SingletonPlacement.Spread || Volatile.Read(ref _stopped) == 1)
        {
            return Task.FromResult(false);
        }

        var rehearsal = RehearseTwiceAsync(session, run, timeout, cancellationToken);
        _rehearsal = rehearsal; // StopAsync ends it first
        return rehearsal;
    }

    /// <summary>
    /// Twice: some code is prepared only on its second run (dependency injection compiles a service's resolver in the
    /// background after its second resolution), and that should happen now, not at the real take-over.
    /// </summary>
    private async Task<bool> RehearseTwiceAsync(LockSession session, Func<ILeadership, IServiceProvider, CancellationToken, Task> run, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var logger = _loggerFactory.CreateLogger("HighlanderPG.Rehearsal");
        var started = _time.GetTimestamp();
        var ran = await RehearseCoreAsync(session, run, timeout, cancellationToken).ConfigureAwait(false)
            && await RehearseCoreAsync(session, run, timeout, cancellationToken).ConfigureAwait(false);
        Log.Rehearsed(logger, ran, _time.GetElapsedTime(started));
        return ran;
    }

    private Task _rehearsal = Task.CompletedTask;
    private readonly CancellationTokenSource _rehearsalStop = new();

    private async Task<bool> RehearseCoreAsync(LockSession session, Func<ILeadership, IServiceProvider, CancellationToken, Task> run, TimeSpan timeout, CancellationToken cancellationToken)
    {
        // What a real acquisition also touches, in the same order.
        System.Runtime.CompilerServices.RuntimeHelpers.RunClassConstructor(typeof(HighlanderActivities).TypeHandle);
        System.Runtime.CompilerServices.RuntimeHelpers.RunClassConstructor(typeof(HighlanderMetrics).TypeHandle);
        var ran = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously); // the child has returned
        var registration = new SingletonRegistration(
            RehearsalName,
            typeof(DelegateSingleton),
            sp => new DelegateSingleton(sp.GetRequiredService<ILeadership>(), sp, async (leadership, services, token) =>
            {
                try
                {
                    await run(leadership, services, token).ConfigureAwait(false);
                }
                finally
                {
                    ran.TrySetResult();
                }
            }),
            configure: null);
        var singleton = _options.SingletonDefaults.CopyTo(new ClusterSingletonOptions());
        singleton.RestartPolicy = RestartPolicy.Never; // done once it returns: the lock is kept until the rehearsal ends it
        var key = BitConverter.ToInt64(System.Security.Cryptography.RandomNumberGenerator.GetBytes(sizeof(long)));
        session.SetNeverFenced(key, on: true);
        // A round ends once the child has returned (the runner keeps the lock, its restart policy being Never, until the
        // round ends it). Not when the runner reports Leading: a BackgroundService's ExecuteAsync starts on the thread pool
        // after StartAsync returns, and a stop that came first would keep the child from running at all.
        var runner = new SingletonRunner(registration, singleton, key, _options, LeaseTimings.From(_options), session, _services, _time,
            FormattingOnlyLogger.Instance, static _ => { }, static () => { }, rehearsal: true);
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _rehearsalStop.Token);
        var running = Task.Run(() => runner.RunAsync(stop.Token), CancellationToken.None);
        var done = false;
        try
        {
            await ran.Task.WaitAsync(timeout, _time, stop.Token).ConfigureAwait(false);
            done = true;
        }
        catch (Exception ex) when (ex is TimeoutException or OperationCanceledException)
        {
            // Not taken in time (a drained node, a lost session) or the node is stopping: given up, nothing ran.
        }
        finally
        {
            // The runner stops what still runs and releases the lock (announced like any release) before it returns.
            await stop.CancelAsync().ConfigureAwait(false);
            await running.ConfigureAwait(false);
            session.SetNeverFenced(key, on: false);
        }

        return done;
    }

    private void Publish(SingletonStateChanged change)
    {
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
