using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace HighlanderPG.Supervision;

/// <summary>One run of a singleton's child: a fresh instance in its own DI scope, started, watched, stopped.</summary>
internal sealed class ChildIncarnation : IAsyncDisposable
{
    private readonly AsyncServiceScope _scope;
    private readonly IHostedService? _instance;
    private Task _start = Task.CompletedTask;
    private readonly TaskCompletionSource _never = new();
    private Task? _stop;
    private bool _stopRequested;
    private bool _begun;

    private ChildIncarnation(AsyncServiceScope scope, IHostedService? instance, Exception? error)
    {
        _scope = scope;
        _instance = instance;
        StartError = error;
    }

    /// <summary>Completes (never faults) when the child's <c>StartAsync</c> returned or threw.</summary>
    public Task Started => _start;

    /// <summary>Why the child could not start, once <see cref="Started"/> completed.</summary>
    public Exception? StartError { get; private set; }

    /// <summary>
    /// Completes when the child exits on its own (a <see cref="BackgroundService"/>'s execution, or a failed start);
    /// never for other hosted services, nor before the start completed.
    /// </summary>
    public Task Completion => !_start.IsCompleted ? _never.Task
        : StartError is not null ? Task.CompletedTask
        : (_instance as BackgroundService)?.ExecuteTask ?? _never.Task;

    /// <summary>Completes when nothing of the child runs any more (start, execution, stop all ended).</summary>
    public Task Exited => Task.WhenAll(
        _start,
        _instance is BackgroundService { ExecuteTask: { } execution } ? execution.ContinueWith(static _ => { }, TaskScheduler.Default) : Task.CompletedTask,
        _stop?.ContinueWith(static _ => { }, TaskScheduler.Default) ?? (_instance is BackgroundService ? Task.CompletedTask : _never.Task));

    /// <summary>The child's failure, if it failed (only meaningful once <see cref="Completion"/> completed).</summary>
    public Exception? Error => StartError ?? Completion switch
    {
        { IsFaulted: true } t => t.Exception!.InnerExceptions.Count == 1 ? t.Exception.InnerException : t.Exception,
        { IsCanceled: true } when !_stopRequested => new OperationCanceledException("The child's execution was canceled although nobody asked it to stop."),
        _ => null,
    };

    /// <summary>
    /// Whether any of the child may still be running (its start, its execution, or, for a plain hosted service, until its
    /// stop completed), judged from the tasks' states alone so that it can be asked from any thread without waiting.
    /// </summary>
    public bool IsRunning
    {
        get
        {
            if (!Volatile.Read(ref _begun) || _instance is null)
            {
                return false;
            }

            if (!Volatile.Read(ref _start).IsCompleted)
            {
                return true;
            }

            if (_instance is BackgroundService background)
            {
                return background.ExecuteTask is { IsCompleted: false };
            }

            return StartError is null && Volatile.Read(ref _stop) is not { IsCompleted: true };
        }
    }

    /// <summary>What of the child still runs, for an escalation's reason.</summary>
    public string DescribeRunning() =>
        !Volatile.Read(ref _begun) || _instance is null ? "it had not started"
        : !Volatile.Read(ref _start).IsCompleted ? "its StartAsync had not returned"
        : _instance is BackgroundService { ExecuteTask: { IsCompleted: false } } ? "its ExecuteAsync had not returned"
        : Volatile.Read(ref _stop) is { IsCompleted: false } ? "its StopAsync had not returned"
        : "it had just ended";

    /// <summary>Creates the child in a new scope; <see cref="Begin"/> starts it.</summary>
    public static ChildIncarnation Create(SingletonRegistration registration, IServiceProvider services, ILeadership leadership)
    {
        var scope = services.CreateAsyncScope();
        IHostedService? instance = null;
        Exception? error = null;
        try
        {
            scope.ServiceProvider.GetRequiredService<LeadershipAccessor>().Current = leadership;
            instance = registration.Factory(scope.ServiceProvider);
        }
        catch (Exception ex)
        {
            error = ex;
        }

        return new ChildIncarnation(scope, instance, error);
    }

    /// <summary>Starts the child; the start runs beside the caller (see <see cref="Started"/>).</summary>
    public void Begin(CancellationToken cancellationToken)
    {
        if (_instance is not null)
        {
            Volatile.Write(ref _start, RunStartAsync(_instance, cancellationToken));
        }

        Volatile.Write(ref _begun, true);
    }

    private async Task RunStartAsync(IHostedService instance, CancellationToken cancellationToken)
    {
        await Task.Yield(); // the start runs beside the runner, which bounds it
        try
        {
            // Like the host does: an IHostedLifecycleService gets StartingAsync before and StartedAsync after, all within
            // the same bounded start.
            var lifecycle = instance as IHostedLifecycleService;
            if (lifecycle is not null)
            {
                await lifecycle.StartingAsync(cancellationToken).ConfigureAwait(false);
            }

            await instance.StartAsync(cancellationToken).ConfigureAwait(false);
            if (lifecycle is not null)
            {
                await lifecycle.StartedAsync(cancellationToken).ConfigureAwait(false);
            }
        }
        catch (Exception ex)
        {
            StartError = ex;
        }
    }

    public string Describe()
    {
        var error = Error;
        return error is null ? "the child completed" : $"the child failed: {error.GetType().Name}: {error.Message}";
    }

    /// <summary>
    /// Stops the child within <paramref name="budget"/>, or sooner if the lease is lost and its escalation point comes first.
    /// Returns whether it stopped in time.
    /// </summary>
    public async Task<bool> StopAsync(TimeSpan budget, Leasing.Lease lease, TimeProvider time)
    {
        // A child that ended before it was asked to stop exited on its own: a cancellation then is its own failure.
        _stopRequested = !Completion.IsCompleted;
        if (_instance is null)
        {
            return true;
        }

        var start = time.GetTimestamp();
        var budgetEnd = start + Leasing.LeaseTimings.ToTimestampDelta(budget, time);
        using var expired = new CancellationTokenSource();

        // Timers have millisecond granularity and may fire a little early: each firing checks the monotonic clock and
        // re-arms for the rest, so the child always gets its whole time.
        ITimer? timer = null;
        void Arm()
        {
            var until = Math.Min(budgetEnd, lease.EscalateAtTimestamp);
            var left = time.GetElapsedTime(time.GetTimestamp(), until);
            try
            {
                if (left <= TimeSpan.Zero)
                {
                    expired.Cancel();
                }
                else
                {
                    timer?.Change(left + TimeSpan.FromTicks(TimeSpan.TicksPerMillisecond - 1), Timeout.InfiniteTimeSpan);
                }
            }
            catch (ObjectDisposedException)
            {
            }
        }

        using var armTimer = timer = time.CreateTimer(_ => Arm(), null, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
        Arm();
        using var rearm = lease.LostToken.Register(Arm);
        using var expiredSignal = new CancellationSignal(expired.Token);

        // A start still running is waited for within the same budget: StopAsync is only called on a started child.
        await Task.WhenAny(_start, expiredSignal.Task).ConfigureAwait(false);
        if (!_start.IsCompleted)
        {
            return false;
        }

        if (StartError is not null && _instance is not BackgroundService)
        {
            return true;
        }

        var stop = HostedServiceSteps.StopAsync(_instance, expired.Token);
        Volatile.Write(ref _stop, stop);
        await Task.WhenAny(stop, expiredSignal.Task).ConfigureAwait(false);
        if (_instance is BackgroundService { ExecuteTask: { } execution })
        {
            await Task.WhenAny(execution, expiredSignal.Task).ConfigureAwait(false);
            return execution.IsCompleted;
        }

        return stop.IsCompleted && !expired.IsCancellationRequested;
    }

    public async ValueTask DisposeAsync()
    {
        await HostedServiceSteps.DisposeQuietlyAsync(_instance, _scope).ConfigureAwait(false);
    }
}
