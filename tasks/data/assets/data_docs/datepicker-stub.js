/* transferops: bootstrap-datepicker is not vendored, but bootstrap-table's filter control calls
   $(...).datepicker() for the "Run Time" filter of the Data Docs index and stops drawing the
   table when it is missing. This no-op stands in: that filter is a plain text box (type a date
   as YYYY-MM-DD). */
if (window.jQuery && !window.jQuery.fn.datepicker) {
  window.jQuery.fn.datepicker = function () {
    return this;
  };
}
