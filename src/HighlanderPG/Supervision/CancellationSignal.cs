namespace HighlanderPG.Supervision;

/// <summary>A task that completes when a token fires, whose registration is removed on dispose (unlike <c>Task.Delay(-1, token)</c> on a long-lived token).</summary>
internal sealed class CancellationSignal : IDisposable
{
    private readonly TaskCompletionSource _fired = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly CancellationTokenRegistration _registration;

    public CancellationSignal(CancellationToken token)
    {
        _registration = token.Register(static state => ((TaskCompletionSource)state!).TrySetResult(), _fired);
    }

    public Task Task => _fired.Task;

    public void Dispose() => _registration.Dispose();
}
