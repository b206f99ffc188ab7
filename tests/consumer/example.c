#include <embag/embag.h>
#include <stdio.h>

int main(void) {
  float rows[4 * 3] = {0};                 /* a 4 x 3 table, row r filled with r */
  const int64_t indices[] = {3, 1, 1, 2};  /* two bags: {3, 1, 1} and {2} */
  const int64_t offsets[] = {0, 3};
  float out[2 * 3];
  embag_table* table = NULL;
  embag_bags bags = {0};
  embag_options options;
  embag_matrix out_view = {out, 2, 3, 0};
  embag_status status;
  int i;

  for (i = 0; i < 12; ++i) rows[i] = (float)(i / 3);
  status = embag_table_from_memory(rows, 4, 3, 0, &table);  /* borrows rows: no copy */
  if (status != EMBAG_OK) goto failed;

  bags.indices = indices;
  bags.num_indices = 4;
  bags.index_type = EMBAG_INT64;
  bags.layout = EMBAG_BAGS_OFFSETS;
  bags.boundaries = offsets;
  bags.num_boundaries = 2;
  bags.boundary_type = EMBAG_INT64;
  embag_options_init(&options);
  options.mode = EMBAG_MODE_MEAN;
  options.max_threads = 1;  /* inline: the caller parallelises across requests */

  status = embag_forward(table, &bags, &options, &out_view, NULL, 0);
  if (status != EMBAG_OK) goto failed;
  printf("bag means: %g %g\n", out[0], out[3]);  /* 1.66667 2 */
  embag_table_destroy(table);
  return 0;

failed:
  fprintf(stderr, "embag: %s: %s\n", embag_status_name(status), embag_last_error());
  embag_table_destroy(table);
  return 1;
}
