using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace HighlanderPG.Tests.Supervision;

/// <summary>Watchers can await connection attempts: each failed one is published, not only the first.</summary>
public sealed class ConnectionAttemptTests
{
    [Fact]
    public async Task Every_failed_connection_attempt_while_disconnected_is_published()
    {
        // A port nobody listens on: every attempt is refused at once.
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();

        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        builder.Services.AddHighlander(o =>
        {
            o.ConnectionString = $"Host=127.0.0.1;Port={port};Username=u;Password=p;Timeout=5";
            o.NodeId = "unreachable";
            o.ReconnectMinDelay = TimeSpan.FromMilliseconds(20);
            o.ReconnectMaxDelay = TimeSpan.FromMilliseconds(50);
        });
        builder.Services.AddClusterSingleton("job", (leadership, services, ct) => Task.Delay(Timeout.Infinite, ct));
        using var host = builder.Build();
        var singletons = host.Services.GetRequiredService<IClusterSingletons>();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        var watch = singletons.WatchAsync(timeout.Token);
        await host.StartAsync(timeout.Token);
        try
        {
            var failures = new List<SingletonStateChanged>();
            await foreach (var change in watch)
            {
                if (change.Previous == SingletonState.Disconnected && change.Current == SingletonState.Disconnected)
                {
                    failures.Add(change);
                    if (failures.Count == 3)
                    {
                        break;
                    }
                }
            }

            Assert.All(failures, f =>
            {
                Assert.Equal("job", f.Name);
                Assert.StartsWith("cannot connect", f.Reason, StringComparison.Ordinal);
            });
            Assert.Equal(SingletonState.Disconnected, singletons.Get("job")!.State);
            Assert.StartsWith("cannot connect", singletons.Get("job")!.LastError, StringComparison.Ordinal);
        }
        finally
        {
            await host.StopAsync(CancellationToken.None);
        }
    }
}
