-- Bulk transfer: one event reads a large result set (rows of --rowbytes, --rows of them).
sysbench.cmdline.options = {
   ["rowbytes"] = {"size of each row in bytes", 1024},
   ["rows"] = {"rows per result set", 1024},
}

function thread_init()
   drv = sysbench.sql.driver()
   con = drv:connect()
end

function event()
   con:query(string.format("SELECT REPEAT('x', %d) FROM seq_1_to_%d",
                           sysbench.opt.rowbytes, sysbench.opt.rows))
end

function thread_done()
   con:disconnect()
end
