using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace HighlanderPG.Supervision;

/// <summary>What a singleton's child and a group's member share: their stop steps and their disposal, each of which may throw.</summary>
internal static class HostedServiceSteps
{
    /// <summary>
    /// Stops <paramref name="instance"/> as the host does: an <see cref="IHostedLifecycleService"/>
    /// gets <c>StoppingAsync</c> before and <c>StoppedAsync</c> after <c>StopAsync</c>, all with the same token; each is
    /// called even when the one before threw.
    /// </summary>
    public static async Task StopAsync(IHostedService instance, CancellationToken token)
    {
        var lifecycle = instance as IHostedLifecycleService;
        if (lifecycle is not null)
        {
            await CallQuietlyAsync(lifecycle.StoppingAsync, token).ConfigureAwait(false);
        }

        await CallQuietlyAsync(instance.StopAsync, token).ConfigureAwait(false);
        if (lifecycle is not null)
        {
            await CallQuietlyAsync(lifecycle.StoppedAsync, token).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Runs one stop step (<c>StoppingAsync</c>, <c>StopAsync</c>, <c>StoppedAsync</c>): one that throws still counts as
    /// stopped once the service's execution ended, which is what the runner and the group judge by.
    /// </summary>
    private static async Task CallQuietlyAsync(Func<CancellationToken, Task> step, CancellationToken token)
    {
        try
        {
            await step(token).ConfigureAwait(false);
        }
        catch (Exception)
        {
            // Judged by its execution, not by this step.
        }
    }

    /// <summary>Disposes the service instance, then its scope: a failing dispose must neither keep a lock held nor stop the supervision.</summary>
    public static async ValueTask DisposeQuietlyAsync(object? instance, AsyncServiceScope scope)
    {
        try
        {
            switch (instance)
            {
                case IAsyncDisposable asyncDisposable:
                    await asyncDisposable.DisposeAsync().ConfigureAwait(false);
                    break;
                case IDisposable disposable:
                    disposable.Dispose();
                    break;
            }
        }
        catch (Exception)
        {
            // The service's own dispose failed: nothing more to do for it.
        }

        try
        {
            await scope.DisposeAsync().ConfigureAwait(false);
        }
        catch (Exception)
        {
            // The scope's other services failed to dispose: likewise.
        }
    }
}
