using HighlanderPG.Supervision;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace HighlanderPG.Groups;

/// <summary>
/// One run of a group member: a fresh instance in its own DI scope (with the group's <see cref="ILeadership"/>),
/// started, watched, stopped. The group's supervisor awaits every start and every stop to its end: the group reports
/// itself running (to the singleton's runner and its lease guard) until every member's code has returned.
/// </summary>
internal sealed class MemberIncarnation : IAsyncDisposable
{
    private readonly AsyncServiceScope _scope;
    private readonly IHostedService? _instance;
    private readonly TaskCompletionSource _never = new();
    private readonly CancellationTokenSource _startToken = new();
    private Task _start = Task.CompletedTask;
    private bool _stopRequested;

    private MemberIncarnation(AsyncServiceScope scope, IHostedService? instance, Exception? error)
    {
        _scope = scope;
        _instance = instance;
        StartError = error;
    }

    /// <summary>Why the member could not be created or started, once its start completed.</summary>
    public Exception? StartError { get; private set; }

    /// <summary>
    /// Completes when the member exits on its own (a <see cref="BackgroundService"/>'s execution, or a failed start);
    /// never for other hosted services, nor before the start completed.
    /// </summary>
    public Task Completion => !_start.IsCompleted ? _never.Task
        : StartError is not null ? Task.CompletedTask
        : (_instance as BackgroundService)?.ExecuteTask ?? _never.Task;

    /// <summary>The member's failure, if it failed (meaningful once <see cref="Completion"/> completed).</summary>
    public Exception? Error => StartError ?? Completion switch
    {
        { IsFaulted: true } t => t.Exception!.InnerExceptions.Count == 1 ? t.Exception.InnerException : t.Exception,
        { IsCanceled: true } when !_stopRequested => new OperationCanceledException("The member's execution was canceled although nobody asked it to stop."),
        _ => null,
    };

    public static MemberIncarnation Create(GroupMemberSpec spec, IServiceProvider services, ILeadership leadership)
    {
        var scope = services.CreateAsyncScope();
        IHostedService? instance = null;
        Exception? error = null;
        try
        {
            scope.ServiceProvider.GetRequiredService<LeadershipAccessor>().Current = leadership;
            instance = spec.Factory(scope.ServiceProvider);
        }
        catch (Exception ex)
        {
            error = ex;
        }

        return new MemberIncarnation(scope, instance, error);
    }

    /// <summary>
    /// Starts the member (like the host: <c>StartingAsync</c>, <c>StartAsync</c>, <c>StartedAsync</c>); never throws.
    /// <paramref name="groupStopping"/> cuts the start short only while it runs: a <see cref="BackgroundService"/> links
    /// its stopping token to its start token for good, and each member must be told to stop by its own
    /// <see cref="StopAsync"/>, in the group's reverse order, not all at once when the group stops.
    /// </summary>
    public async Task StartAsync(CancellationToken groupStopping)
    {
        if (_instance is null)
        {
            return;
        }

        var start = RunStartAsync(_instance, _startToken.Token);
        _start = start;
        using (groupStopping.Register(static s => ((CancellationTokenSource)s!).Cancel(), _startToken))
        {
            await start.ConfigureAwait(false);
        }
    }

    private async Task RunStartAsync(IHostedService instance, CancellationToken cancellationToken)
    {
        await Task.Yield(); // the caller registers the group's stop first
        try
        {
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

    /// <summary>
    /// Stops the member and completes only when nothing of it runs any more (its stop and its execution ended), however
    /// long that takes: <paramref name="hurry"/> tells it the stop is no longer graceful (the host's meaning of the
    /// token), and the caller bounds the wait (or the singleton's runner does, and escalates).
    /// </summary>
    public async Task StopAsync(CancellationToken hurry)
    {
        _stopRequested = !Completion.IsCompleted;
        if (_instance is null)
        {
            return;
        }

        await _start.ConfigureAwait(false);
        if (StartError is not null && _instance is not BackgroundService)
        {
            return;
        }

        await HostedServiceSteps.StopAsync(_instance, hurry).ConfigureAwait(false);

        if (_instance is BackgroundService { ExecuteTask: { } execution })
        {
            await execution.ContinueWith(static _ => { }, CancellationToken.None, TaskContinuationOptions.None, TaskScheduler.Default).ConfigureAwait(false);
        }
    }

    public async ValueTask DisposeAsync()
    {
        await HostedServiceSteps.DisposeQuietlyAsync(_instance, _scope).ConfigureAwait(false);

        _startToken.Dispose();
    }
}
