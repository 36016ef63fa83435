using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace HighlanderPG.Supervision;

/// <summary>One run of a singleton's child: a fresh instance in its own DI scope, started, watched, stopped.</summary>
internal sealed class ChildIncarnation : IAsyncDisposable
{
    private readonly AsyncServiceScope _scope;
    private readonly IHostedService? _instance;
    private readonly TaskCompletionSource _never = new();
    private bool _stopRequested;

    private ChildIncarnation(AsyncServiceScope scope, IHostedService? instance, Exception? startError)
    {
        _scope = scope;
        _instance = instance;
        StartError = startError;
    }

    /// <summary>Completes when the child exits on its own (a <see cref="BackgroundService"/>'s execution); never for other hosted services.</summary>
    public Task Completion => StartError is not null ? Task.CompletedTask : (_instance as BackgroundService)?.ExecuteTask ?? _never.Task;

    public Exception? StartError { get; }

    /// <summary>The child's failure, if it failed (only meaningful once <see cref="Completion"/> completed).</summary>
    public Exception? Error => StartError ?? Completion switch
    {
        { IsFaulted: true } t => t.Exception!.InnerExceptions.Count == 1 ? t.Exception.InnerException : t.Exception,
        { IsCanceled: true } when !_stopRequested => new OperationCanceledException("The child's execution was canceled although nobody asked it to stop."),
        _ => null,
    };

    public static async Task<ChildIncarnation> StartAsync(SingletonRegistration registration, IServiceProvider services, ILeadership leadership, CancellationToken cancellationToken)
    {
        var scope = services.CreateAsyncScope();
        scope.ServiceProvider.GetRequiredService<LeadershipAccessor>().Current = leadership;
        IHostedService? instance = null;
        try
        {
            instance = registration.Factory(scope.ServiceProvider);
            await instance.StartAsync(cancellationToken).ConfigureAwait(false);
            return new ChildIncarnation(scope, instance, null);
        }
        catch (Exception ex)
        {
            return new ChildIncarnation(scope, instance, ex);
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
        var budgetEnd = start + (long)(budget.Ticks * (time.TimestampFrequency / (double)TimeSpan.TicksPerSecond));
        using var expired = new CancellationTokenSource(Timeout.InfiniteTimeSpan, time);
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
                    expired.CancelAfter(left);
                }
            }
            catch (ObjectDisposedException)
            {
            }
        }

        Arm();
        using var rearm = lease.LostToken.Register(Arm);
        using var expiredSignal = new CancellationSignal(expired.Token);

        var stop = _instance.StopAsync(expired.Token);
        await Task.WhenAny(stop, expiredSignal.Task).ConfigureAwait(false);
        if (stop.IsCompleted)
        {
            _ = stop.Exception; // a throwing StopAsync still counts as stopped when its execution ended
        }

        if (_instance is BackgroundService { ExecuteTask: { } execution })
        {
            await Task.WhenAny(execution, expiredSignal.Task).ConfigureAwait(false);
            return execution.IsCompleted;
        }

        return stop.IsCompletedSuccessfully || (stop.IsFaulted && !expired.IsCancellationRequested);
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            switch (_instance)
            {
                case IAsyncDisposable asyncDisposable:
                    await asyncDisposable.DisposeAsync().ConfigureAwait(false);
                    break;
                case IDisposable disposable:
                    disposable.Dispose();
                    break;
            }
        }
        catch (ObjectDisposedException)
        {
        }
        finally
        {
            await _scope.DisposeAsync().ConfigureAwait(false);
        }
    }
}
