using Microsoft.Playwright;
using static Microsoft.Playwright.Assertions;

namespace HighlanderPG.Dashboard.Tests;

/// <summary>The dashboard's page in a real headless browser (Debian's chromium), updating live.</summary>
[Collection(DashboardServer.Name)]
public sealed class DashboardBrowserTests(PostgresFixture pg)
{
    /// <summary>Debian's chromium package (scripts/prerequisites.sh installs it); Playwright downloads no browser.</summary>
    public const string Chromium = "/usr/bin/chromium";

    [Fact]
    public async Task The_page_shows_the_singletons_and_their_leader_and_updates_live_on_a_hand_over()
    {
        Assert.True(File.Exists(Chromium), $"{Chromium} is missing: install Debian's chromium package (scripts/prerequisites.sh tests does).");
        await using var cluster = new DashboardCluster(pg.ConnectionString);
        string[] singletons = ["outbox-relay", "nightly-report", "cache-warmer"];
        var a = await cluster.StartWebNodeAsync("web-1", singletons);
        foreach (var name in singletons)
        {
            await DashboardCluster.WaitForStateAsync(a.App, name, SingletonState.Leading);
        }

        var b = await cluster.StartNodeAsync("web-2", singletons);
        await DashboardCluster.WaitForStateAsync(b, "outbox-relay", SingletonState.Following);

        using var playwright = await Playwright.CreateAsync();
        await using var browser = await playwright.Chromium.LaunchAsync(new BrowserTypeLaunchOptions { ExecutablePath = Chromium, Headless = true });
        var page = await browser.NewPageAsync(new BrowserNewPageOptions { ViewportSize = new ViewportSize { Width = 1360, Height = 860 } });
        var errors = new List<string>();
        page.Console += (_, message) =>
        {
            if (message.Type == "error")
            {
                errors.Add(message.Text);
            }
        };
        page.PageError += (_, error) => errors.Add(error);
        await page.GotoAsync(new Uri(a.Address, "/highlander").ToString());

        var wait = new LocatorAssertionsToContainTextOptions { Timeout = 60_000 };
        var relay = page.Locator("tr[data-singleton='outbox-relay'] td.leader");
        foreach (var name in singletons)
        {
            await Expect(page.Locator($"tr[data-singleton='{name}'] td.leader")).ToContainTextAsync("web-1", wait);
        }

        await Expect(page.Locator("tr[data-node='web-2'] td.node")).ToContainTextAsync("web-2", wait);
        await Expect(page.Locator("tr[data-singleton='outbox-relay'] td.local")).ToContainTextAsync("Leading", wait);
        // The epoch once web-1's bump shows (a poll may fall between its lock and its bump: "–" or "N (last)" then).
        await Expect(page.Locator("tr[data-singleton='outbox-relay'] td.epoch")).ToHaveTextAsync(new System.Text.RegularExpressions.Regex(@"^\d+$"), new LocatorAssertionsToHaveTextOptions { Timeout = 60_000 });
        var epochBefore = await page.Locator("tr[data-singleton='outbox-relay'] td.epoch").TextContentAsync();

        // The hand-over, with the page left open: no reload, the DOM changes by itself.
        await a.Singletons.StepDownAsync("outbox-relay");
        await Expect(relay).ToContainTextAsync("web-2", wait);
        await Expect(page.Locator("tr[data-singleton='outbox-relay'] td.local")).ToContainTextAsync("Following", wait);
        await Expect(page.Locator("tr[data-handover='outbox-relay']").First).ToContainTextAsync("web-2", wait);
        await Expect(page.Locator("tr[data-singleton='outbox-relay'] td.epoch")).ToHaveTextAsync(
            new System.Text.RegularExpressions.Regex($@"^(?!{epochBefore}$)\d+$"), new LocatorAssertionsToHaveTextOptions { Timeout = 60_000 }); // web-2's own epoch
        await Expect(page.Locator("tr[data-singleton='nightly-report'] td.leader")).ToContainTextAsync("web-1", wait);
        await Expect(page.Locator("tr[data-node='web-2'] td.leads")).ToContainTextAsync("outbox-relay", wait);

        // The screenshot in the README (docs/images/dashboard.png is this file, copied).
        await page.Locator("tr[data-singleton='outbox-relay']").EvaluateAsync("e => e.classList.remove('changed')");
        var screenshot = Path.Combine(AppContext.BaseDirectory, "dashboard.png");
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = screenshot, FullPage = true });
        Assert.True(new FileInfo(screenshot).Length > 10_000);
        Assert.True(errors.Count == 0, "The page logged errors: " + string.Join("; ", errors));
    }
}

/// <summary>The dashboard's actions in a real headless browser: a step-down from a node that does not lead, a drain and an undrain.</summary>
[Collection(DashboardServer.Name)]
public sealed class DashboardActionBrowserTests(PostgresFixture pg)
{
    [Fact]
    public async Task Step_down_from_another_nodes_dashboard_then_drain_and_undrain_a_node_from_the_page()
    {
        Assert.True(File.Exists(DashboardBrowserTests.Chromium), $"{DashboardBrowserTests.Chromium} is missing: install Debian's chromium package (scripts/prerequisites.sh tests does).");
        await using var cluster = new DashboardCluster(pg.ConnectionString);
        string[] singletons = ["billing", "mailer"];
        var plain = await cluster.StartNodeAsync("ops-1", singletons);
        foreach (var name in singletons)
        {
            await DashboardCluster.WaitForStateAsync(plain, name, SingletonState.Leading);
        }

        var web = await cluster.StartWebNodeAsync("ops-web", singletons, o => o.ActionsPolicy = DashboardCluster.AdminPolicy);
        foreach (var name in singletons)
        {
            await DashboardCluster.WaitForStateAsync(web.App, name, SingletonState.Following);
        }

        using var playwright = await Playwright.CreateAsync();
        await using var browser = await playwright.Chromium.LaunchAsync(new BrowserTypeLaunchOptions { ExecutablePath = DashboardBrowserTests.Chromium, Headless = true });
        var context = await browser.NewContextAsync(new BrowserNewContextOptions
        {
            ExtraHTTPHeaders = new Dictionary<string, string> { ["X-Test-User"] = "root", ["X-Test-Roles"] = "admin" },
        });
        var page = await context.NewPageAsync();
        var errors = new List<string>();
        page.PageError += (_, error) => errors.Add(error);
        page.Dialog += (_, dialog) => errors.Add("dialog: " + dialog.Message);
        await page.GotoAsync(web.Dashboard.ToString());
        var wait = new LocatorAssertionsToContainTextOptions { Timeout = 60_000 };
        await Expect(page.Locator("tr[data-singleton='billing'] td.leader")).ToContainTextAsync("ops-1", wait);

        // Step down "billing" from ops-web's dashboard, although ops-1 leads it: it moves to ops-web.
        await ClickAsync(page, "tr[data-singleton='billing'] button.step-down", "/step-down");
        await Expect(page.Locator("tr[data-singleton='billing'] td.leader")).ToContainTextAsync("ops-web", wait);
        await Expect(page.Locator("tr[data-singleton='mailer'] td.leader")).ToContainTextAsync("ops-1", wait);

        // Drain ops-1 from the page: mailer moves too, and ops-1 leads nothing.
        await ClickAsync(page, "tr[data-node='ops-1'] button.drain", "/drain");
        await Expect(page.Locator("tr[data-singleton='mailer'] td.leader")).ToContainTextAsync("ops-web", wait);
        await Expect(page.Locator("tr[data-node='ops-1'] td.leads")).ToHaveTextAsync("–", new LocatorAssertionsToHaveTextOptions { Timeout = 60_000 });
        await Expect(page.Locator("tr[data-node='ops-1'] td.node")).ToContainTextAsync("drained until", wait);
        Assert.Equal(1L, await Scalar<long>(cluster, $"SELECT count(*) FROM {cluster.FencingSchema}.hold_offs WHERE node_id = 'ops-1' AND key IS NULL AND until > now()"));

        await ClickAsync(page, "tr[data-node='ops-1'] button.undrain", "/undrain");
        await Expect(page.Locator("tr[data-node='ops-1'] td.node")).Not.ToContainTextAsync("drained", wait);
        Assert.Equal(0L, await Scalar<long>(cluster, $"SELECT count(*) FROM {cluster.FencingSchema}.hold_offs WHERE node_id = 'ops-1' AND until > now()"));
        Assert.True(errors.Count == 0, "The page logged errors: " + string.Join("; ", errors));
    }

    /// <summary>Clicks an action's button and waits for its POST's answer, which must succeed.</summary>
    private static async Task ClickAsync(IPage page, string button, string action)
    {
        var response = await page.RunAndWaitForResponseAsync(() => page.Locator(button).ClickAsync(), r => r.Url.EndsWith(action, StringComparison.Ordinal));
        Assert.True(response.Ok, await response.TextAsync());
    }

    private static async Task<T> Scalar<T>(DashboardCluster cluster, string sql)
    {
        await using var connection = new Npgsql.NpgsqlConnection(cluster.ConnectionString);
        await connection.OpenAsync();
        await using var cmd = new Npgsql.NpgsqlCommand(sql, connection);
        return (T)(await cmd.ExecuteScalarAsync())!;
    }
}
