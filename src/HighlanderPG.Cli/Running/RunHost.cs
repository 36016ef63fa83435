using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using HighlanderPG.Diagnostics;
using HighlanderPG.Leasing;
using HighlanderPG.Cli.Configuration;
using HighlanderPG.Cli.Diagnostics;
using HighlanderPG.Cli.Processes;
using HighlanderPG.Hosting;
using HighlanderPG.Supervision;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace HighlanderPG.Cli.Running;

/// <summary>
/// <c>highlander run</c>: a generic host with the HighlanderPG engine and one cluster singleton whose child is the command.
/// </summary>
internal static partial class RunHost
{
    /// <summary>The library's option names (as its validation problems list them), and the flags that set them.</summary>
    private static readonly (string Option, string Flag)[] OptionFlags =
    [
        (nameof(HighlanderOptions.LeaseDuration), "--lease"),
        (nameof(HighlanderOptions.HeartbeatInterval), "--heartbeat"),
        (nameof(HighlanderOptions.StopTimeout), "--stop-timeout"),
        (nameof(HighlanderOptions.SafetyMargin), "--safety-margin"),
        (nameof(HighlanderOptions.LockDelayAfterServerStart), "--lock-delay"),
        (nameof(HighlanderOptions.WaitSlice), "--wait-slice"),
        (nameof(HighlanderOptions.NodeId), "--node-id"),
        (nameof(HighlanderOptions.Namespace), "--namespace"),
        (nameof(HighlanderOptions.ConnectionString), "--connection"),
        (nameof(HighlanderOptions.FencingSchema), "--fencing-schema"),
        (nameof(HighlanderOptions.Fencing), "--fencing"),
        ("Name", "--name"),
        (nameof(HighlanderOptions.Endpoint), "--endpoint"),
        (nameof(ClusterSingletonOptions.MaxRestarts), "--max-restarts"),
        (nameof(ClusterSingletonOptions.RestartWindow), "--restart-window"),
        (nameof(ClusterSingletonOptions.RestartDelay), "--restart-delay"),
    ];

    public static async Task<int> RunAsync(RunSettings settings, ResolvedConnection connection, CancellationToken cancellationToken)
    {
        if (ProcessLauncher.MissingPrerequisite() is { } missing)
        {
            Say.Error("run", missing);
            return ExitCodes.Usage;
        }

        string? program = null;
        string? shell = null;
        if (settings.Group is null)
        {
            program = ProcessLauncher.FindProgram(settings.Command[0]);
            if (program is null)
            {
                Say.Error("run", $"command not found: {settings.Command[0]} (not an executable file{(settings.Command[0].Contains('/', StringComparison.Ordinal) ? "" : " on PATH")})");
                return ExitCodes.Usage;
            }
        }
        else
        {
            // Members run through the shell, like foreman's and honcho's.
            shell = ProcessLauncher.FindProgram("/bin/sh") ?? ProcessLauncher.FindProgram("sh");
            if (shell is null)
            {
                Say.Error("run", "no /bin/sh: the members of a procfile run through /bin/sh -c");
                return ExitCodes.Usage;
            }
        }

        // Descendants that leave the command's process group (setsid, a daemon's double fork) are re-parented to highlander
        // instead of PID 1 when their parent exits, so they can be stopped before the lock is released (Escapees).
        Escapees.Enabled = Native.BecomeChildSubreaper();
        await ProcessLauncher.Shared.WarmUpAsync().ConfigureAwait(false);
        Escapees.WarmUp(ProcessLauncher.Shared);
        WarmUpStopSignal();
        using var loggerProvider = new CliLoggerProvider(Console.Error, settings.LogLevel <= LogLevel.Debug, settings.LogFormat);
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true, Args = [] });
        builder.Logging.ClearProviders();
        builder.Logging.AddProvider(loggerProvider);
        builder.Logging.SetMinimumLevel(settings.LogLevel);
        builder.Logging.AddFilter("Npgsql", LogLevel.Warning);
        builder.Logging.AddFilter("Microsoft", LogLevel.Warning);
        // The stop signals are this command's own (StopOnSignals), not the console lifetime's: that one would start the
        // host's shutdown beside the node's stop, on the same cores, on the way from SIGTERM to the release.
        builder.Services.AddSingleton<IHostLifetime, SignalsHandledElsewhere>();

        var once = settings.Once ? new OnceGate() : null;
        var lastExit = new StrongBox<CommandOutcome?>(); // service mode: how the command's last run ended
        var child = settings.Group is null
            ? new CommandChild(settings.Command, program!, ProcessLauncher.Shared)
            {
                BeforeStart = once is null ? null : once.TryStart,
                AfterExit = once is null ? outcome => Volatile.Write(ref lastExit.Value, outcome) : once.Finish,
            }
            : null;
        var group = settings.Group is { } groupSettings ? new GroupChild(groupSettings, settings, shell!, ProcessLauncher.Shared) : null;
        builder.Services.AddHighlander(o =>
        {
            settings.Apply(o);
            // A command that outlives its stop budget is SIGKILLed with its group, instead of the library's default of ending
            // highlander (which the parent-death signal and the watchdog would turn into the same kill, less gracefully).
            o.OnEscalation = child is not null ? child.KillNowAsync : group!.KillNowAsync;
            // A command rehearses with a command of its own (RehearseWhenSettledAsync below), and --once has no next take-over.
            if (child is not null)
            {
                o.RehearseTakeOver = false;
            }
        });
        builder.Services.AddClusterSingleton(
            settings.Name,
            (leadership, services, ct) =>
            {
                var killAfter = LeaseTimings.From(services.GetRequiredService<IOptions<HighlanderOptions>>().Value).ChildKillAfter;
                return child is not null ? child.RunAsync(leadership, killAfter, ct) : group!.RunAsync(leadership, killAfter, ct);
            },
            settings.Apply);

        // The library's own check, before the host is built, so that each problem can name the flags of its options.
        if (Problems(settings, builder.Services) is { Count: > 0 } problems)
        {
            Say.Error("run", "invalid configuration:\n" + string.Join("\n", problems.Select(p => "  - " + p)));
            return ExitCodes.Usage;
        }

        using var host = builder.Build();
        var logger = host.Services.GetRequiredService<ILoggerFactory>().CreateLogger("highlander");
        child?.Logger = logger;

        if (group is not null)
        {
            group.Logger = logger;
            group.GiveUp = host.Services.GetRequiredService<IHostApplicationLifetime>().StopApplication;
        }
        IClusterSingletons singletons;
        HighlanderOptions options;
        IAsyncEnumerator<SingletonStateChanged> changes;
        using var watching = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);

        // Shutting down: from a stop signal (StopOnSignals, heard from before the host's start on), or from any other stop
        // of the host.
        var lifetime = host.Services.GetRequiredService<IHostApplicationLifetime>();
        using var shuttingDown = new CancellationTokenSource();
        using var stoppingLink = lifetime.ApplicationStopping.Register(static state => ((CancellationTokenSource)state!).Cancel(), shuttingDown);
        using var stopSignals = new StopOnSignals(shuttingDown, lifetime);
        try
        {
            options = host.Services.GetRequiredService<IOptions<HighlanderOptions>>().Value;
            singletons = host.Services.GetRequiredService<IClusterSingletons>();
            changes = singletons.WatchAsync(watching.Token).GetAsyncEnumerator(watching.Token); // subscribed before the start: nothing is missed
            await host.StartAsync(CancellationToken.None).ConfigureAwait(false);
            stopSignals.Started(singletons);
        }
        catch (Exception ex) when (ValidationFailures(ex) is { } failures)
        {
            // Not expected (the same check ran above), but the host's own validation stays the last word.
            Say.Error("run", "invalid configuration:\n" + string.Join("\n", failures.Select(f => "  - " + f)));
            return ExitCodes.Usage;
        }

        if (child is not null && once is null && singletons is HighlanderNode node)
        {
            child.ShuttingDown = shuttingDown.Token;
            _ = RehearseWhenSettledAsync(node, child, settings.Name, options, logger, watching.Token);
        }

        if (once is null && singletons is HighlanderNode stepping)
        {
            YieldOnceReleased(stepping, settings.Name, shuttingDown.Token, logger);
            _ = KeepCompilerInBackgroundAsync(shuttingDown.Token);
        }

        await using (changes.ConfigureAwait(false))
        {
            LogStarting(logger, options.NodeId, settings.Name, connection.Display, Durations.Format(options.LeaseDuration), settings.Once ? "once" : settings.Group is null ? "service" : "group");
            try
            {
                return once is null
                    ? await ServeAsync(host, singletons, settings, group, lastExit, logger).ConfigureAwait(false)
                    : await RunOnceAsync(host, singletons, options, settings, once, changes, watching, connection, logger).ConfigureAwait(false);
            }
            finally
            {
                child?.DiscardPrepared();
            }
        }
    }

    /// <summary>
    /// SIGTERM, SIGINT and SIGQUIT begin the node's graceful stop on the signal's own thread, and the host's stop only once
    /// the node's has ended: the command is told to stop, and the name released once it has exited, without the host's
    /// own shutdown path running beside it on the same cores (docs/cli.md, "Hand-over: where the time goes"). The node's
    /// stop runs once; the host's later call to it waits for the same stop. Heard from before the host's start on (the
    /// host has no lifetime of its own listening: <see cref="SignalsHandledElsewhere"/>); until the node has started, a
    /// signal stops the host, whose stop stops the node.
    /// </summary>
    private sealed class StopOnSignals : IDisposable
    {
        private readonly CancellationTokenSource _shuttingDown;
        private readonly IHostApplicationLifetime _lifetime;
        private readonly PosixSignalRegistration[] _registrations;
        private HighlanderNode? _node;

        public StopOnSignals(CancellationTokenSource shuttingDown, IHostApplicationLifetime lifetime)
        {
            _shuttingDown = shuttingDown;
            _lifetime = lifetime;
            Action<PosixSignalContext> handler = OnSignal;
            System.Runtime.CompilerServices.RuntimeHelpers.PrepareMethod(handler.Method.MethodHandle);
            _registrations =
            [
                PosixSignalRegistration.Create(PosixSignal.SIGTERM, handler),
                PosixSignalRegistration.Create(PosixSignal.SIGINT, handler),
                PosixSignalRegistration.Create(PosixSignal.SIGQUIT, handler),
            ];
        }

        /// <summary>The host has started: from now on a stop signal stops the node first (its stop compiled ahead now).</summary>
        public void Started(IClusterSingletons singletons)
        {
            if (singletons is HighlanderNode node)
            {
                node.StopRunnersInline = true; // its children are this command's own: the signal's thread SIGTERMs COMMAND's group
                node.PrepareStop();
                Volatile.Write(ref _node, node);
            }
        }

        private void OnSignal(PosixSignalContext context)
        {
            context.Cancel = true; // not the runtime's default (ending the process at once): the graceful stop below
            _shuttingDown.Cancel();
            if (Volatile.Read(ref _node) is not { } node)
            {
                _lifetime.StopApplication();
                return;
            }

            _ = node.StopAsync(CancellationToken.None).ContinueWith(
                static (_, lifetime) => ((IHostApplicationLifetime)lifetime!).StopApplication(),
                _lifetime,
                CancellationToken.None,
                TaskContinuationOptions.ExecuteSynchronously,
                TaskScheduler.Default);
        }

        public void Dispose()
        {
            foreach (var registration in _registrations)
            {
                registration.Dispose();
            }
        }
    }

    /// <summary>
    /// The host's lifetime when <see cref="StopOnSignals"/> hears the stop signals: nothing to wait for at the start,
    /// nothing to undo at the stop (the console lifetime it replaces would stop the host at a signal itself).
    /// </summary>
    private sealed class SignalsHandledElsewhere : IHostLifetime
    {
        public Task WaitForStartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }

    /// <summary>
    /// Runs the runtime's path for a stop signal once, at start (before any handler of the host's is there), on a SIGQUIT
    /// this process sends itself and its own handler swallows: the first stop signal otherwise pays, on the way from
    /// SIGTERM to the command's stop, for that path running for the first time (a thread of its own per signal, the
    /// dispatch to the handlers: about 8 ms measured here). A SIGQUIT from elsewhere in that instant is swallowed too.
    /// Skipped when this process ignores SIGQUIT (started in the background by a shell: no handler would hear it).
    /// The handler of <see cref="StopOnSignals"/> is compiled ahead as well (it cannot run before it is needed).
    /// </summary>
    private static void WarmUpStopSignal()
    {
        if (Native.SignalIgnored(Native.SigQuit))
        {
            return;
        }

        using var handled = new ManualResetEventSlim();
        using (PosixSignalRegistration.Create(PosixSignal.SIGQUIT, context =>
        {
            context.Cancel = true;
            handled.Set();
        }))
        {
            if (Native.SignalProcess(Environment.ProcessId, Native.SigQuit))
            {
                handled.Wait(TimeSpan.FromMilliseconds(500)); // a few milliseconds here; never long, whatever happens
            }
        }
    }

    /// <summary>
    /// A rehearsal of the take-over and the step-down (docs/cli.md, "Hand-over: the rehearsal"): once this node leads the
    /// name (its command runs) or sees another node lead it, the library runs both through the real path on a private lock
    /// (<see cref="HighlanderNode.RehearseAsync"/>), with a child that starts <c>sleep 3600</c> (without <c>sleep</c>,
    /// <c>sh -c :</c>) the way the command is started (parent-death signal, own session, the watchdog) and stops it the
    /// way the command is stopped, so that the real hand-over later does not run that code, in this process, for the
    /// first time. Nothing of the command runs for it, and it leaves the command's escaped processes alone.
    /// </summary>
    private static async Task RehearseWhenSettledAsync(HighlanderNode node, CommandChild child, string name, HighlanderOptions options, ILogger logger, CancellationToken cancellationToken)
    {
        try
        {
            await foreach (var change in node.WatchAsync(cancellationToken).ConfigureAwait(false))
            {
                if (change.Name != name || node.Get(name) is not { } status)
                {
                    continue;
                }

                if (status.State is SingletonState.Stopping or SingletonState.Completed or SingletonState.Faulted)
                {
                    return; // on its way out: nothing to rehearse for
                }

                if (status.State == SingletonState.Leading || (status.State == SingletonState.Following && status.Leader is { } leader && leader.NodeId != options.NodeId))
                {
                    break;
                }
            }

            var shell = ProcessLauncher.FindProgram("sh");
            if (shell is null || cancellationToken.IsCancellationRequested)
            {
                return;
            }

            // The rehearsal's command waits until it is stopped (SIGTERM to its group, as COMMAND is stopped), so that stopping
            // it runs too; started ahead like COMMAND's next run, so that becoming it runs too. Without sleep, sh -c :
            // (which ends by itself: then the take-over is rehearsed, not the stop).
            var sleep = ProcessLauncher.FindProgram("sleep");
            var rehearsal = new CommandChild(sleep is null ? ["sh", "-c", ":"] : ["sleep", "3600"], sleep ?? shell, ProcessLauncher.Shared)
            {
                Rehearsal = true,
                Logger = FormattingOnlyLogger.Instance,
                ShuttingDown = child.ShuttingDown,
            };
            var killAfter = LeaseTimings.From(options).ChildKillAfter;
            rehearsal.PrepareAhead(shell, HighlanderNode.RehearsalName, options.NodeId, options.Namespace, now: true);
            var rounds = 0;
            try
            {
                await node.RehearseAsync(
                    async (leadership, _, running, ct) =>
                    {
                        if (++rounds == HighlanderNode.RehearsalRounds.Length)
                        {
                            rehearsal.PrepareNoMore(); // none after the last round
                        }

                        await rehearsal.WhenPreparedAsync().ConfigureAwait(false);
                        await rehearsal.RunAsync(leadership, killAfter, ct, running).ConfigureAwait(false);
                    },
                    RehearsalTimeout,
                    cancellationToken).ConfigureAwait(false);
            }
            finally
            {
                rehearsal.DiscardPrepared();
            }

            // Then the next run of COMMAND is kept started ahead, waiting to become COMMAND (CommandChild.PrepareAhead).
            child.PrepareAhead(shell, name, options.NodeId, options.Namespace, now: node.Get(name)?.State == SingletonState.Following);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            // Stopping: nothing to rehearse for.
        }
        catch (Exception ex)
        {
            // Only a warm-up: the real hand-over works without it.
            LogRehearsalFailed(logger, ex);
        }
    }

    /// <summary>
    /// Once this node is stopping and its release is on its way to the server, lowers this process's CPU priority: what is
    /// left (reading the server's answer, the host's shutdown, the runtime's exit, much of it compiled for the first time
    /// then) can wait, and on a machine shared with the node taking over (or with the server) it would compete with that
    /// node starting the command. Lowered as the release statement is written, not once its answer is read: measured,
    /// the answer took 2-26 ms to be read and acted on by a process at full priority, while the follower took over.
    /// docs/cli.md, "Hand-over: where the time goes".
    /// </summary>
    private static void YieldOnceReleased(HighlanderNode node, string name, CancellationToken stopping, ILogger logger)
    {
        var yielded = 0;
        void YieldOnce()
        {
            if (stopping.IsCancellationRequested && Interlocked.Exchange(ref yielded, 1) == 0)
            {
                LogYielded(logger, name, Native.LowerOwnPriority());
            }
        }

        // On the session's loop, right after the release is written (the only release while stopping is the name's).
        Action releasesSent = YieldOnce;
        // And, should that not have run (a session given up instead), on the runner's thread at the state change that follows.
        Action<SingletonStateChanged> stopped = change =>
        {
            if (change.Current == SingletonState.Stopped && change.Name == name)
            {
                YieldOnce();
            }
        };
        Precompile.Delegate(releasesSent);
        Precompile.Delegate(stopped);
        Precompile.Methods(typeof(Native), nameof(Native.LowerOwnPriority), "SetPriority");
        node.ReleasesSentInline = releasesSent;
        node.StateChangedInline = stopped;
    }

    /// <summary>
    /// Keeps the runtime's background compiler (the thread that recompiles code the process runs often, optimized) at
    /// the lowest CPU priority, so that it does not take a core from this process's own work when that is pressing: a
    /// take-over, measured, set it off (its calls carried methods over the runtime's call counts), and it used 1-4 ms of
    /// CPU of the few milliseconds that a take-over takes, beside it, on a 2-core machine (docs/cli.md, "Hand-over: where
    /// the time goes"). The runtime starts that thread when it has something to compile and ends it after a few idle
    /// seconds, so it is looked for every <see cref="CompilerCheckInterval"/>; when nothing else wants the CPU it
    /// compiles as fast as before.
    /// </summary>
    private static async Task KeepCompilerInBackgroundAsync(CancellationToken stopping)
    {
        var lowered = new HashSet<int>();
        try
        {
            while (!stopping.IsCancellationRequested)
            {
                Native.LowerThreadsNamed(Native.RuntimeCompilerThreadName, lowered);
                await Task.Delay(CompilerCheckInterval, TimeProvider.System, stopping).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException)
        {
            // Stopping.
        }
    }

    /// <summary>How often <see cref="KeepCompilerInBackgroundAsync"/> looks for the runtime's compiler thread.</summary>
    private static readonly TimeSpan CompilerCheckInterval = TimeSpan.FromSeconds(1);

    /// <summary>How long a rehearsal may take at most (a drained node never takes its private lock).</summary>
    private static readonly TimeSpan RehearsalTimeout = TimeSpan.FromSeconds(10);

    /// <summary>Service mode: until SIGTERM/SIGINT (graceful step-down, exit 0) or a crash loop (exit 1).</summary>
    private static async Task<int> ServeAsync(IHost host, IClusterSingletons singletons, RunSettings settings, GroupChild? group, StrongBox<CommandOutcome?> lastExit, ILogger logger)
    {
        await host.WaitForShutdownAsync(CancellationToken.None).ConfigureAwait(false);
        if (group?.Failure is { } failure)
        {
            Say.Error("run", $"'{settings.Name}': {failure}; every member was stopped and the name released; giving up");
            return ExitCodes.Failure;
        }

        var status = singletons.Get(settings.Name);
        if (status?.State == SingletonState.Faulted)
        {
            // A command that exits 0 again and again is no crash, but under --restart always it is restarted each time.
            var why = Volatile.Read(ref lastExit.Value) is { StoppedByUs: false, ExitCode: 0 }
                ? "it kept exiting by itself with code 0, and --restart always restarts it each time: a command run as a service should keep running, or use --restart on-failure or never"
                : status.LastError ?? "its runs kept failing";
            Say.Error("run", $"'{settings.Name}': the command crash-looped ({why}); giving up");
            return ExitCodes.Failure;
        }

        LogStopped(logger, settings.Name);
        return ExitCodes.Ok;
    }

    /// <summary>
    /// Cron mode: wait (up to --wait) until this node leads (run the command once, release, exit with its code), or another
    /// node is seen holding the name (exit 3), or no session could be had (exit 4).
    /// </summary>
    private static async Task<int> RunOnceAsync(
        IHost host,
        IClusterSingletons singletons,
        HighlanderOptions options,
        RunSettings settings,
        OnceGate gate,
        IAsyncEnumerator<SingletonStateChanged> changes,
        CancellationTokenSource watching,
        ResolvedConnection connection,
        ILogger logger)
    {
        var nextChange = Task.FromResult(false);
        try
        {
            return await RunOnceCoreAsync().ConfigureAwait(false);
        }
        finally
        {
            // An async enumerator cannot be disposed while a MoveNextAsync is in flight: end that one first.
            await watching.CancelAsync().ConfigureAwait(false);
            try
            {
                await nextChange.ConfigureAwait(false);
            }
            catch (Exception)
            {
                // Canceled just now, or the feed had ended: either way nothing is waiting on it any more.
            }
        }

        async Task<int> RunOnceCoreAsync()
        {
            var stopping = host.Services.GetRequiredService<IHostApplicationLifetime>().ApplicationStopping;
            var stoppingTask = Task.Delay(Timeout.Infinite, stopping).ContinueWith(_ => { }, TaskScheduler.Default);
            // One timer for --wait; everything else wakes the loop as it happens: a change of this node's view (the
            // library also publishes every failed connection attempt), the command's start, or a stop request.
            var deadline = Task.Delay(settings.Wait, CancellationToken.None);
            nextChange = changes.MoveNextAsync().AsTask();
            LeaderInfo? heldBy = null;
            int? result = null;
            while (result is null && !gate.Started.Task.IsCompleted)
            {
                if (nextChange.IsCompleted)
                {
                    if (nextChange.IsCompletedSuccessfully && nextChange.Result)
                    {
                        var change = changes.Current;
                        if (change.Leader is { } leader && leader.NodeId != options.NodeId && change.Current is SingletonState.Following or SingletonState.Disconnected)
                        {
                            heldBy = leader;
                        }

                        nextChange = changes.MoveNextAsync().AsTask();
                    }
                    else
                    {
                        nextChange = stoppingTask.ContinueWith(_ => false, TaskScheduler.Default);
                    }
                }

                var status = singletons.Get(settings.Name);
                if (status?.Leader is { } seen && seen.NodeId != options.NodeId && status.State is SingletonState.Following or SingletonState.Disconnected)
                {
                    heldBy = seen;
                }

                var timeUp = deadline.IsCompleted;
                if (stopping.IsCancellationRequested && gate.TryGiveUp())
                {
                    Say.Error("run", $"interrupted before '{settings.Name}' could be taken; the command did not run");
                    result = ExitCodes.Interrupted;
                }
                else if (timeUp && status is { State: SingletonState.Disconnected, LastError: { } error } && gate.TryGiveUp())
                {
                    Say.Error("run", $"cannot connect to {connection.Display} within {Durations.Format(settings.Wait)}: {error}; the command did not run");
                    result = ExitCodes.CannotConnect;
                }
                else if (timeUp && heldBy is not null && gate.TryGiveUp())
                {
                    var holder = heldBy.NodeId is { } node ? $"node {node}" : $"a session that is not a highlander node ({heldBy.ApplicationName})";
                    Say.Error("run", $"'{settings.Name}' is held by {holder} (backend pid {heldBy.BackendPid}{(heldBy.ClientAddress is { } address ? ", client " + address : "")}); the command did not run");
                    result = ExitCodes.HeldElsewhere;
                }
                else if (timeUp)
                {
                    // Past --wait with nothing to report yet (still connecting, or nobody seen holding it): the next change decides.
                    await Task.WhenAny(nextChange, gate.Started.Task, stoppingTask).ConfigureAwait(false);
                }
                else
                {
                    await Task.WhenAny(nextChange, gate.Started.Task, stoppingTask, deadline).ConfigureAwait(false);
                }
            }

            if (result is null)
            {
                // This node leads and the command runs: until it exits, or highlander is told to stop (then the host stops it).
                await Task.WhenAny(gate.Finished.Task, stoppingTask).ConfigureAwait(false);
            }

            var lastError = singletons.Get(settings.Name)?.LastError;
            var toldToStop = stopping.IsCancellationRequested; // read before the host's stop, which sets it too
            await host.StopAsync(CancellationToken.None).ConfigureAwait(false);
            if (result is not null)
            {
                return result.Value;
            }

            // The host has stopped, so the command's run has ended and reported how; anything else is an interruption.
            var outcome = gate.Finished.Task.IsCompletedSuccessfully ? gate.Finished.Task.Result : new CommandOutcome(ExitCodes.Interrupted, StoppedByUs: true);
            if (outcome.StoppedByUs)
            {
                var why = toldToStop ? "highlander was told to stop" : $"this node lost '{settings.Name}' ({lastError ?? "lease lost"})";
                Say.Error("run", $"interrupted: {why}; the command was stopped before it finished (its exit code was {outcome.ExitCode})");
                return ExitCodes.Interrupted;
            }

            LogOnceDone(logger, settings.Name, outcome.ExitCode);
            return outcome.ExitCode;
        }
    }

    private static IReadOnlyList<string>? ValidationFailures(Exception ex) => ex switch
    {
        OptionsValidationException validation => validation.Failures.ToList(),
        AggregateException aggregate when aggregate.InnerExceptions.All(e => e is OptionsValidationException) =>
            aggregate.InnerExceptions.Cast<OptionsValidationException>().SelectMany(e => e.Failures).ToList(),
        _ => null,
    };

    /// <summary>
    /// What the library's validator finds wrong with the options these settings make and the singletons registered in
    /// <paramref name="services"/>, one line per problem, each followed by the flags that set the options it names.
    /// </summary>
    internal static IReadOnlyList<string> Problems(RunSettings settings, IServiceCollection services)
    {
        var options = new HighlanderOptions();
        settings.Apply(options);
        var registrations = services.Select(d => d.IsKeyedService ? null : d.ImplementationInstance).OfType<SingletonRegistration>();
        return [.. HighlanderOptionsValidator.Check(options, registrations).Select(Describe)];
    }

    /// <summary>A problem's message, and which flag sets each option it concerns, e.g. <c>(LeaseDuration is --lease)</c>.</summary>
    internal static string Describe(OptionProblem problem)
    {
        var named = problem.Options
            .Distinct(StringComparer.Ordinal)
            .SelectMany(option => OptionFlags.Where(f => f.Option == option).Select(f => $"{f.Option} is {f.Flag}"))
            .ToList();
        return named.Count == 0 ? problem.Message : $"{problem.Message} ({string.Join(", ", named)})";
    }

    [LoggerMessage(EventId = HighlanderEventIds.RunContending, Level = LogLevel.Information, Message = "Node {NodeId} contends for '{Name}' on {DataSource} (lease {Lease}, {Mode} mode)")]
    private static partial void LogStarting(ILogger logger, string nodeId, string name, string dataSource, string lease, string mode);

    [LoggerMessage(EventId = HighlanderEventIds.RunSteppedDown, Level = LogLevel.Information, Message = "Stepped down from '{Name}' and stopped")]
    private static partial void LogStopped(ILogger logger, string name);

    [LoggerMessage(EventId = HighlanderEventIds.RunYielded, Level = LogLevel.Debug, Message = "Released '{Name}' while stopping: this process's CPU priority is lowered for the rest of its shutdown (SCHED_IDLE, nice 19, {Threads} threads)")]
    private static partial void LogYielded(ILogger logger, string name, int threads);

    [LoggerMessage(EventId = HighlanderEventIds.RunRehearsalFailed, Level = LogLevel.Warning, Message = "The take-over rehearsal failed; the first take-over may take longer")]
    private static partial void LogRehearsalFailed(ILogger logger, Exception exception);

    [LoggerMessage(EventId = HighlanderEventIds.RunOnceDone, Level = LogLevel.Information, Message = "Ran '{Name}' once; the command exited with code {ExitCode}; released")]
    private static partial void LogOnceDone(ILogger logger, string name, int exitCode);
}

/// <summary>
/// Cron mode's one decision, taken under a lock: either the command starts (once), or highlander gives up; never both.
/// </summary>
internal sealed class OnceGate
{
    private readonly Lock _gate = new();
    private Phase _phase;

    private enum Phase
    {
        Waiting,
        Running,
        Done,
        GaveUp,
    }

    public TaskCompletionSource Started { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public TaskCompletionSource<CommandOutcome> Finished { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Whether the command may start now: only the first time, and only if highlander has not given up.</summary>
    public bool TryStart()
    {
        lock (_gate)
        {
            if (_phase != Phase.Waiting)
            {
                return false;
            }

            _phase = Phase.Running;
        }

        Started.TrySetResult();
        return true;
    }

    /// <summary>Whether highlander may give up now: only if the command has not started.</summary>
    public bool TryGiveUp()
    {
        lock (_gate)
        {
            if (_phase != Phase.Waiting)
            {
                return false;
            }

            _phase = Phase.GaveUp;
            return true;
        }
    }

    public void Finish(CommandOutcome outcome)
    {
        lock (_gate)
        {
            _phase = Phase.Done;
        }

        Finished.TrySetResult(outcome);
    }
}
